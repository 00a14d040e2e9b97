"""Shared fixtures for the pipeline tests: a tiny random Llama, the real MedQA test file, the demo data.

Fixtures (all CPU, offline):
- ``tiny_model_dir``: Path of a tiny random Llama + byte-level BPE tokenizer (pipeline.model.tiny), built once a session.
- ``tiny_tokenizer``: that tokenizer, loaded once a session (it has <s> BOS, </s> EOS, <pad>; adds no BOS itself).
- ``tiny_model``: a fresh float32 copy of the model in eval mode for each test (cheap: ~0.1 s), so a test that
  trains or changes it cannot affect another.
- ``medqa_test_path``: tests/data/medqa/us5_test.jsonl, shipped with the tests (or $MEDQA_TEST_FILE).
- ``demo_data_paths``: (train.jsonl, test.jsonl) from pipeline.data.demo.write_demo_data(seed=0), once a session.
- ``write_jsonl``: write_jsonl(lines, name="data.jsonl") -> Path; each item is a dict (dumped as JSON) or a raw str.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup without it hangs ~50 s before failing

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The real MedQA 5-option test split ships with the tests (MIT; tests/data/medqa/NOTICE.md).
MEDQA_TEST_FILE = PROJECT_ROOT / "tests" / "data" / "medqa" / "us5_test.jsonl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    # PreTrainedTokenizerFast loads the tokenizer in transformers 4.57 and 5.x alike (AutoTokenizer in 4.57
    # cannot read a 5.x-saved "TokenizersBackend" config).
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(tiny_model_dir)


@pytest.fixture
def tiny_model(tiny_model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="session")
def medqa_test_path() -> Path:
    path = Path(os.environ.get("MEDQA_TEST_FILE", MEDQA_TEST_FILE))
    if not path.is_file():
        pytest.fail(f"MedQA test file not found at {path} ($MEDQA_TEST_FILE points elsewhere?)")
    return path


@pytest.fixture(scope="session")
def demo_data_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from pipeline.data.demo import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    def write(lines: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        path.write_text(text, encoding="utf-8")
        return path

    return write
