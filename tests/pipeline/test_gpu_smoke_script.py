"""scripts/gpu/llama7b_shape_smoke.py at a scaled-down shape on the CPU: the same code the H200 run takes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("llama7b_shape_smoke", ROOT / "scripts/gpu/llama7b_shape_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaled_down_smoke_run_reports_random_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    smoke = _load_script()
    assert smoke.main(["--scale-down", "--steps", "3", "--batch-size", "4", "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "run" / "report.json").read_text())
    assert report["model"]["random_weights"] is True
    assert "RANDOM WEIGHTS" in (tmp_path / "out" / "run" / "report.md").read_text()
    assert report["steps"] == 3
    # The seed recipe's settings survive, except what the CPU cannot do (and the report says why).
    assert report["recipe"]["lora"]["r"] == 64 and report["recipe"]["lora"]["alpha"] == 128
    # model.gradient_checkpointing: auto in the seed recipe: the memory plan decides, and the report says what ran.
    assert report["recipe"]["model"]["gradient_checkpointing"] == "auto"
    plan = report["training"]["memory_plan"]
    assert plan is not None and report["model"]["gradient_checkpointing"] is plan["gradient_checkpointing"]
    if not torch.cuda.is_available():
        # The seed recipe's model.dtype is bfloat16, so the unquantized fallback base is bf16 too.
        assert report["quantization_path"] == "bf16-fallback" and "CPU" in report["model"]["quantization_reason"]
    # Full-length sequences: every training example reaches data.max_length (128 at the scaled-down shape).
    assert report["data"]["examples_at_max_length"] == report["data"]["train_rows"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["random_weights"] is True and summary["steps"] == 3
