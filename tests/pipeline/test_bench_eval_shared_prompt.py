"""scripts/bench/eval_shared_prompt.py runs on CPU with a tiny model and the MedQA stand-in tokenizer (so CI keeps
it from rotting), and its numbers hang together: every setting timed for both scorings, the peer included, and
the shared-prompt predictions equal to the peer's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ("random:llama2-7b:num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,"
        "num_key_value_heads=4,vocab_size=3000")


def test_bench_runs_on_cpu_with_a_tiny_model_and_the_medqa_tokenizer(tmp_path, medqa_test_path):
    out = tmp_path / "eval.json"
    cmd = [sys.executable, str(ROOT / "scripts/bench/eval_shared_prompt.py"), "--model", TINY,
           "--tokenizer", "medqa-bpe", "--data", str(medqa_test_path), "--limit", "10", "--scoring", "both",
           "--batch-size", "3", "4:600", "--peer-batch-size", "8", "--repeats", "1", "--warmup", "2",
           "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", KIT_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "letter scoring" in proc.stdout and "cloze scoring" in proc.stdout

    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["questions"] == 10 and meta["model_vocab"] == 3000 and meta["tokenizer_vocab"] == 3000
    assert meta["mean_prompt_tokens"] > 100  # real MedQA lengths, not the demo set's
    for scoring in ("letter", "cloze"):
        rows = data["scorings"][scoring]
        assert [r["name"] for r in rows] == ["shared-prompt b3", "shared-prompt b4 t600", "full b8 (peer)"]
        for r in rows:
            assert r["wall_s"] > 0 and r["questions_per_s"] > 0 and r["x_peer"] > 0, r
        for r in rows[:2]:
            assert r["differing_predictions"] == 0 and r["max_score_difference"] < 1e-3, r


def test_compare_reports_how_far_apart_the_flipped_predictions_were():
    """A flip is measured by the peer's own margin for its choice over ours (a near-tie or not)."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        from eval_shared_prompt import compare
    finally:
        sys.path.remove(str(ROOT / "scripts" / "bench"))
    peer = [{"predicted": "A", "scores": {"A": -1.0, "B": -1.05}}, {"predicted": "B", "scores": {"A": -3.0, "B": -1.0}}]
    mine = [{"predicted": "B", "scores": {"A": -1.1, "B": -1.0}}, {"predicted": "B", "scores": {"A": -3.0, "B": -1.0}}]
    result = compare(mine, peer)
    assert result["differing_predictions"] == 1
    assert abs(result["widest_flipped_margin"] - 0.05) < 1e-9 and abs(result["max_score_difference"] - 0.1) < 1e-9
    assert compare(peer, peer) == {"differing_predictions": 0, "max_score_difference": 0.0,
                                   "widest_flipped_margin": 0.0}
