"""``python -m pipeline evaluate`` as a whole command (issue 24, evaluation): its default batching is the seed
recipe's on a GPU and a smaller token budget on a CPU, recorded in the report as used; and it imports no training
code (tests/pipeline/test_bench_eval_model.py: the random model its benchmark times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import _parser, eval_batching, main
from pipeline.core.config import CPU_EVAL_TOKEN_BUDGET, SEED_EVAL_BATCH_SIZE, SEED_EVAL_TOKEN_BUDGET, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_the_seed_recipe_names_the_cli_defaults():
    seed = load_recipe(ROOT / "recipes" / "medqa-qlora-7b.yaml")
    assert (seed.eval.batch_size, seed.eval.token_budget) == (SEED_EVAL_BATCH_SIZE, SEED_EVAL_TOKEN_BUDGET)


@pytest.mark.parametrize("given, device, used", [
    ((None, None), "cuda", (SEED_EVAL_BATCH_SIZE, SEED_EVAL_TOKEN_BUDGET)),
    ((None, None), "cpu", (SEED_EVAL_BATCH_SIZE, CPU_EVAL_TOKEN_BUDGET)),
    ((8, None), "cuda", (8, None)),  # a lone --batch-size keeps its meaning: that many questions, no budget
    ((8, None), "cpu", (8, None)),
    ((None, 600), "cpu", (SEED_EVAL_BATCH_SIZE, 600)),
    ((4, 600), "cuda", (4, 600)),
])
def test_evaluate_batching_from_its_flags(given, device, used):
    assert eval_batching(*given, device) == used


def test_the_cpu_budget_is_the_smaller_one():
    assert CPU_EVAL_TOKEN_BUDGET < SEED_EVAL_TOKEN_BUDGET


def test_evaluate_help_states_the_defaults():
    ev = _parser()._subparsers._group_actions[0].choices["evaluate"]
    text = " ".join(ev.format_help().split())
    assert f"default: {SEED_EVAL_BATCH_SIZE}" in text
    assert f"{SEED_EVAL_TOKEN_BUDGET}, the seed recipe's eval.token_budget, on a GPU; {CPU_EVAL_TOKEN_BUDGET} on a CPU" in text


def test_evaluate_records_the_batching_it_used(tmp_path, tiny_model_dir, medqa_test_path):
    common = ["evaluate", "--model", str(tiny_model_dir), "--data", str(medqa_test_path), "--limit", "6",
              "--device", "cpu", "--scoring", "cloze"]
    assert main(common + ["--output", str(tmp_path / "default")]) == 0
    assert main(common + ["--output", str(tmp_path / "b2"), "--batch-size", "2"]) == 0
    default = json.loads((tmp_path / "default" / "report.json").read_text())["eval"]
    assert (default["batch_size"], default["token_budget"]) == (SEED_EVAL_BATCH_SIZE, CPU_EVAL_TOKEN_BUDGET)
    small = json.loads((tmp_path / "b2" / "report.json").read_text())["eval"]
    assert (small["batch_size"], small["token_budget"]) == (2, None)
    # The batching changes the passes, never a score (a question scores the same whatever its neighbours).
    a, b = ([json.loads(line)["scores"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
            for name in ("default", "b2"))
    assert len(a) == len(b) == 6
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, abs=1e-4)


_IMPORTED = """
import json, sys
from pipeline.__main__ import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_evaluate_without_adapter_imports_no_training_code(tmp_path, tiny_model_dir, medqa_test_path):
    """peft, bitsandbytes, fused kernels and the training stage cost start-up time the scoring never uses."""
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(medqa_test_path), "--limit", "2",
            "--device", "cpu", "--output", str(tmp_path / "ev")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _IMPORTED, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    heavy = [m for m in result["modules"]
             if m.split(".")[0] in ("peft", "bitsandbytes", "liger_kernel", "flash_attn", "rich")
             or m.startswith(("pipeline.train", "pipeline.model.kernels", "pipeline.finetune"))]
    assert heavy == []
