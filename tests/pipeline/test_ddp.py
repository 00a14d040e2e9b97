"""Data-parallel training through torchrun: 2 CPU processes with the gloo backend on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .recipe_helpers import write_questions

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_model_dir, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    train = write_questions(tmp_path / "train.jsonl", 16)
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pipeline", "finetune",
           "--recipe", str(ROOT / "recipes" / "demo-cpu.yaml"), "--plain",
           f"model.name_or_path={tiny_model_dir}", "data.source=files", f"data.train={train}", "data.max_length=128",
           "lora.r=8", "lora.alpha=16",
           "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
           "train.steps=8", "train.batch_size=4", "train.lr=1e-2", "train.warmup_steps=1", "train.checkpoint_every=4",
           f"train.output_dir={out}", "eval.before_training=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["world_size"] == 2 and report["steps"] == 8
    losses = report["training"]["losses"]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    # Rank 0 alone prints progress and writes checkpoints.
    assert proc.stdout.count("step 8/8") == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
