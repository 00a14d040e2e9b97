"""scripts/bench/train_throughput.py runs on CPU with a tiny model (so CI keeps it from rotting) and its numbers
hang together: every trainer timed, the same steps for all, and the same first-step loss (LoRA B starts at zero,
so step 1's loss is the base model's on the same sequences, whichever trainer computes it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_runs_on_cpu_with_a_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts/bench/train_throughput.py"), "--tiny", "--steps", "3", "--warmup", "1",
           "--levers", "2", "--limit", "40", "--per-step", "8", "--micro", "4", "--cap-gb", "1", "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", KIT_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x peer" in proc.stdout and "seed recipe projected" in proc.stdout

    data = json.loads(out.read_text())
    names = [r["trainer"] for r in data["results"]]
    assert names[0] == "peer" and "ours" in names and "ours-before" in names and "ours-1GiB" in names
    assert data["meta"]["questions"] == 40 and data["meta"]["mean_tokens_per_sequence"] > 100  # real MedQA lengths
    first = data["results"][0]["losses"][0]
    for r in data["results"]:
        assert r["tokens_per_s"] > 0 and r["timed_steps"] >= 1, r["trainer"]
        assert r["losses"][0] == pytest.approx(first, rel=1e-4), r["trainer"]
    ours = next(r for r in data["results"] if r["trainer"] == "ours")
    assert len(ours["losses"]) == len(data["results"][0]["losses"]) == 3
    assert ours["plan"]["gradient_checkpointing"] is False  # the seed recipe's auto on a CPU


@pytest.mark.slow
def test_bench_three_way_on_cpu_same_first_loss(tmp_path):
    """--only peer,ours,tuned,ours-rows,ours-adamw: the standard recipe, ours and the tuned peer (padding-free
    DataCollatorWithFlattening batches, the model's own loss) see the same steps; step 1's loss is the base model's
    for all of them, every step is timed (--warmup 0), and the table names both ratios."""
    out = tmp_path / "three.json"
    cmd = [sys.executable, str(ROOT / "scripts/bench/train_throughput.py"), "--tiny", "--steps", "2", "--warmup", "0",
           "--limit", "24", "--per-step", "8", "--micro", "4", "--only", "peer,ours,tuned,ours-rows,ours-adamw", "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", KIT_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x tuned" in proc.stdout
    data = json.loads(out.read_text())
    by = {r["trainer"]: r for r in data["results"]}
    assert list(by) == ["peer", "ours", "tuned", "ours-rows", "ours-adamw"]
    # ours-adamw builds its optimizer through pipeline/train/optim.py from the recipe with train.optimizer=adamw
    assert by["ours-adamw"]["optimizer"] == "AdamW"
    from pipeline.data.packing import packing_unsupported

    # The tuned peer feeds flattened rows (position_ids restarting per sequence) to SDPA; where this stack does not
    # mask packed sequences apart (transformers 4.57 with torch < 2.6: the images' stack) its sequences attend
    # across each other, so its loss is not the base model's there (by ~1e-4 here) and is left out of the equality.
    unmasked = packing_unsupported("sdpa") is not None
    for name, r in by.items():
        assert r["timed_steps"] == 2
        if not (name == "tuned" and unmasked):
            assert r["losses"][0] == pytest.approx(by["peer"]["losses"][0], rel=1e-4), name
    # torch.nn.attention.varlen exists from torch 2.10: on the images' torch 2.3 ours keeps the SDPA mask.
    import importlib.util

    has_varlen = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    assert by["tuned"]["micro_sequences"] == 8 and by["ours"]["varlen"] is has_varlen
    assert by["ours-rows"]["varlen"] is False
