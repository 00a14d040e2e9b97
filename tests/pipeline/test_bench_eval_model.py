"""The random model the evaluation benchmark times (scripts/bench/medqa_bpe.py): LLaMA-shaped random weights from
``pipeline.model.tiny.build_random_model`` with the training bench's MedQA BPE, so MedQA prompts have the training bench's lengths (~257 tokens, not the toy
BPE's ~584), marked RANDOM_WEIGHTS; and
scripts/gpu/speed_round2.sh's eval group on CPU, which builds it and times the command's defaults on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ("random:llama2-7b:num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,"
        "num_key_value_heads=4,vocab_size=3000")


def _bench_module():
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        import medqa_bpe
    finally:
        sys.path.remove(str(ROOT / "scripts" / "bench"))
    return medqa_bpe


def test_bench_model_has_medqa_lengths_and_the_random_marker(tmp_path, medqa_test_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    from pipeline.data.prompts import encode_text, format_prompt
    from pipeline.data.questions import load_questions
    from pipeline.model.load import is_random, resolve_model
    from pipeline.model.tiny import RANDOM_MARKER, train_tokenizer

    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "medqa-bpe"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/bench/medqa_bpe.py"), "--spec", TINY, "--data",
                           str(medqa_test_path), "--vocab", "3000", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert is_random(resolve_model(str(out))) and "tokenizer of 3000 tokens" in (out / RANDOM_MARKER).read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 3000 and config["num_hidden_layers"] == 2
    assert not (tmp_path / "cache" / "models").exists()  # its own folder, never the spec's cache entry

    questions = load_questions(medqa_test_path)[:200]
    bpe = PreTrainedTokenizerFast.from_pretrained(out)
    toy = train_tokenizer(512)
    mean = lambda tok: sum(len(encode_text(tok, format_prompt(q), "auto")) for q in questions) / len(questions)  # noqa: E731
    assert 200 < mean(bpe) < 320 and mean(toy) > 2 * mean(bpe)  # ~257 vs ~584 tokens a prompt
    # The same tokenizer the training bench trains: same ids for the same text.
    same = _bench_module().medqa_tokenizer(load_questions(medqa_test_path), 3000)
    text = format_prompt(questions[0])
    assert same(text)["input_ids"] == bpe(text)["input_ids"]

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert _bench_module().build_medqa_model(TINY, medqa_test_path, 3000, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # built once, then reused
    with pytest.raises(ValueError, match="another random model"):
        _bench_module().build_medqa_model(TINY.replace("num_hidden_layers=2", "num_hidden_layers=3"),
                                          medqa_test_path, 3000, out)


def test_random_model_with_its_own_tokenizer_needs_a_folder_and_enough_rows(tmp_path):
    from pipeline.core.errors import RecipeError
    from pipeline.model.tiny import build_random_model, train_tokenizer

    tok = train_tokenizer(512)
    with pytest.raises(ValueError, match="out_dir"):
        build_random_model(TINY, tokenizer=tok)
    with pytest.raises(RecipeError, match="vocab_size 100"):
        build_random_model(TINY.replace("vocab_size=3000", "vocab_size=100"), tokenizer=tok, out_dir=tmp_path / "m")


def test_resolving_a_built_random_model_loads_no_model_code(tmp_path):
    """``evaluate`` resolves its --model before loading; a built folder must not pull in the Llama modeling code."""
    from pipeline.model.tiny import build_random_model

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), KIT_CACHE_DIR=str(tmp_path))
    build_random_model(TINY, out_dir=tmp_path / "m")
    code = ("import sys; from pathlib import Path; from pipeline.model.tiny import build_random_model; "
            f"build_random_model({TINY!r}, out_dir=Path({str(tmp_path / 'm')!r})); "
            "print([m for m in sys.modules if m.startswith('transformers.models.llama')])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_speed_script_eval_stages_run_on_cpu(tmp_path):
    """scripts/gpu/speed_round2.sh's eval group (SPEED_TINY: a 2-layer model, 20 questions): the MedQA-BPE model is
    built untimed, then the toy-tokenizer letters run and letters and cloze on the MedQA-BPE model, all with the
    CLI's defaults, each exiting 0."""
    spec = TINY
    env = dict(os.environ, SPEED_TINY="1", BUDGET_S="600", SPEED_STAGES="eval", SPEED_MODEL=spec,
               PYTHON=sys.executable, KIT_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu/speed_round2.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    log = (tmp_path / "out" / "speed.log").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for stage in ("build-eval-model", "eval-toy-letter", "eval-letter", "eval-cloze"):
        assert f"== {stage}: rc 0," in log, log[-3000:]
    assert "--batch-size" not in log and "--token-budget" not in log  # the defaults are what is timed
    built = tmp_path / "cache" / "medqa-bpe"
    assert [p.name for p in built.iterdir()] and all((p / "RANDOM_WEIGHTS.txt").is_file() for p in built.iterdir())
