"""The embedded demo: its recipe and script, the SmolLM2 conversion, and (slow) the whole run on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.core.config import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_demo_recipe_is_the_measured_cpu_setup():
    recipe = load_recipe(ROOT / "recipes" / "demo-cpu.yaml")
    assert recipe.model.name_or_path == "smollm2-135m-instruct"
    assert recipe.data.source == "demo" and recipe.data.target == "text" and recipe.eval.scoring == "cloze"
    assert recipe.quantization.mode == "none" and recipe.train.device == "cpu"
    assert (recipe.lora.r, recipe.lora.alpha, recipe.train.steps, recipe.train.batch_size) == (64, 128, 60, 8)
    assert recipe.eval.before_training
    assert recipe.eval.group_by == "answer_idx"  # the report's accuracy per gold letter (position bias)


def test_demo_script_runs_the_demo_recipe_offline():
    script = ROOT / "scripts" / "demo.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "recipes/demo-cpu.yaml" in text and "HF_HUB_OFFLINE=1" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.slow
def test_smollm2_conversion_loads_as_a_plain_llama(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from pipeline.model import smollm2

    try:
        smollm2.find_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))
    path = smollm2.ensure_converted()
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["rope_theta"] == 100000.0 and config["torch_dtype"] == "float32"  # readable by 4.57 too
    assert not list(path.parent.glob(".smollm2-*"))  # no temporary folder left behind
    from pipeline.model.load import load_tokenizer

    tok = load_tokenizer(str(path))
    assert tok.pad_token is not None and len(tok) == 49152
    assert smollm2.ensure_converted() == path  # second call: no conversion


@pytest.mark.slow
def test_demo_end_to_end_raises_accuracy(tmp_path):
    """The whole demo (~5-8 min on 2 shared cores): accuracy after training clearly above before and chance."""
    from pipeline.finetune import finetune

    recipe = load_recipe(ROOT / "recipes" / "demo-cpu.yaml", [f"train.output_dir={tmp_path / 'demo'}"])
    report = finetune(recipe)
    before, after = report["eval"]["before"]["accuracy"], report["eval"]["after"]["accuracy"]
    assert after >= before + 0.3 and after > 0.6, (before, after)
    # The report a review board reads: intervals, the paired before/after test, breakdowns, calibration, curves.
    md = (tmp_path / "demo" / "report.md").read_text()
    for needle in ("## Accuracy with 95% intervals", "## Before vs after training", "McNemar",
                   "## Accuracy by `meta_info`", "| pathogen-heldout |", "## Accuracy by `answer_idx`",
                   "## Predicted vs gold letter", "## Calibration", "](figures/loss.png)", "](figures/reliability.png)"):
        assert needle in md, needle
    analysis = json.loads((tmp_path / "demo" / "analysis.json").read_text())
    assert analysis["before_vs_after"]["mcnemar_exact_p"] < 0.001  # 0.24 -> 0.85 on 116 paired questions
    assert (tmp_path / "demo" / "tensorboard").is_dir()
