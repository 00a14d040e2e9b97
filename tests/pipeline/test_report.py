"""The run report: contents that let someone trust and reproduce a run, and no secrets."""

from __future__ import annotations

import hashlib
import json

import torch

from pipeline.finetune import finetune
from pipeline.report.build import redact

from .recipe_helpers import tiny_recipe


def test_report_contents(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path, eval_rows=8, extra=["eval.before_training=true"])
    returned = finetune(recipe)
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report == json.loads(json.dumps(returned, default=str))

    assert report["recipe"]["lora"]["r"] == 8 and report["recipe"]["train"]["steps"] == 6
    files = {f["path"]: f for f in report["data"]["files"]}
    for path, rows in ((recipe.data.train, 16), (recipe.data.eval, 8)):
        facts = files[str(path)]
        assert facts["rows"] == rows
        assert facts["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()

    model = report["model"]
    assert model["resolved_path"] == str(tiny_model_dir) and model["random_weights"] is False
    assert 0 < model["trainable_params"] < model["total_params"]
    assert model["quantization_path"] == "none-fp32" and model["quantization_reason"]
    assert model["attention"] == "sdpa" and model["attention_reason"]

    env = report["environment"]
    assert env["libraries"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "python"):
        assert name in env["libraries"]
    assert "flash-attn" in env["libraries"]  # None when absent, recorded either way
    assert env["device"]["backend"] in ("cpu", "cuda", "rocm") and env["device"]["device"] == "cpu"
    assert "cuda_version" in env["device"] and "hip_version" in env["device"]

    train = report["training"]
    assert train["steps"] == 6 and len(train["losses"]) == 6
    assert train["final_loss"] == train["losses"][-1] == report["final_loss"]
    assert train["tokens_per_second"] > 0 and train["wall_time_s"] > 0
    assert train["peak_memory"]["peak_rss_gib"] > 0

    assert report["eval"]["before"]["count"] == 8 and report["eval"]["after"]["count"] == 8
    assert report["metrics"] == report["eval"]["after"]

    md = (run / "report.md").read_text()
    for needle in ("Quantization path: **none-fp32**", "Attention: **sdpa**", "before training", "after training",
                   facts["sha256"]):
        assert needle in md


def test_no_secret_in_report_or_logs(tiny_model_dir, tmp_path, monkeypatch, capfd):
    secret = "hf_SeCrEt0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", secret)
    # Even if a secret ended up in a recipe value (here: the output folder name), the report must not carry it.
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=[f"train.output_dir={tmp_path / 'run'}"])
    recipe.train.output_dir = str(tmp_path / f"run-{secret}")
    finetune(recipe)
    run = tmp_path / f"run-{secret}"
    captured = capfd.readouterr()
    report_json = (run / "report.json").read_text()
    assert secret not in report_json and secret not in (run / "report.md").read_text()
    assert "<redacted $HF_TOKEN>" in report_json or "<redacted $HUGGING_FACE_HUB_TOKEN>" in report_json
    assert secret not in captured.out + captured.err


def test_redact_only_touches_secret_looking_variables():
    env = {"HF_TOKEN": "hf_abcdefgh", "MY_PASSWORD": "hunter22", "HOME": "/root"}
    text = redact("token hf_abcdefgh pass hunter22 home /root", env)
    assert text == "token <redacted $HF_TOKEN> pass <redacted $MY_PASSWORD> home /root"
