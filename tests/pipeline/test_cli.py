"""``python -m pipeline``: user mistakes give a short message naming the key or file:line and exit status 2."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.core.config import CPU_EVAL_TOKEN_BUDGET

from .recipe_helpers import write_questions, write_recipe_file

ROOT = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, model_dir: Path, body: str = "") -> Path:
    return write_recipe_file(tmp_path, model_dir, body=body)


def test_unknown_recipe_key_is_named(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir)
    assert main(["finetune", "--recipe", str(recipe), "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "train.stepz" in err and "Traceback" not in err


def test_wrong_type_is_named(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, body="")
    recipe.write_text(recipe.read_text().replace("steps: 4", "steps: four"))
    assert main(["finetune", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "train.steps" in err and "integer" in err


def test_bad_data_lists_file_and_line(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir)
    train = tmp_path / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[2] = "{not json"
    row = json.loads(lines[5])
    row["answer_idx"] = "Z"
    lines[5] = json.dumps(row)
    train.write_text("\n".join(lines) + "\n")
    for command in ("prepare", "finetune"):
        assert main([command, "--recipe", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert f"{train}:3:" in err and f"{train}:6:" in err, err
        assert "Traceback" not in err


def test_prepare_reports_counts_contamination_and_lengths(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir)
    # Make one evaluation question a copy of a training question.
    train_rows = (tmp_path / "train.jsonl").read_text().splitlines()
    with open(tmp_path / "eval.jsonl", "a") as handle:
        handle.write(train_rows[0] + "\n")
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["train"]["rows"] == 16 and summary["eval"]["rows"] == 9
    assert summary["contamination"] == 1 and "warning: 1 evaluation questions" in out
    stats = summary["train_tokens"]
    assert 0 < stats["min"] <= stats["median"] <= stats["p95"] <= stats["max"]


def test_prepare_demo_writes_the_demo_data(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, body="")
    text = recipe.read_text().replace("data: {", "data: {source: demo, ")
    recipe.write_text(text)
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    assert (tmp_path / "run" / "data" / "train.jsonl").is_file()
    assert (tmp_path / "run" / "data" / "test.jsonl").is_file()


def test_finetune_then_evaluate_the_adapter(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir)
    assert main(["finetune", "--recipe", str(recipe), "--plain"]) == 0
    out = capsys.readouterr().out
    assert "step 4/4" in out and "accuracy after:" in out
    assert main(["finetune", "--recipe", str(recipe), "--plain"]) == 2  # checkpoints exist: --resume/--overwrite
    assert "--resume" in capsys.readouterr().err
    adapter = tmp_path / "run" / "adapter"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(adapter),
                 "--data", str(tmp_path / "eval.jsonl"), "--output", str(tmp_path / "ev"),
                 "--scoring", "cloze", "--device", "cpu"]) == 0
    # One number per adapter (issue 10): by default evaluate loads the base as the adapter was trained (its run
    # record) and gets the very predictions file finetune wrote at the end of training, byte for byte.
    assert (tmp_path / "ev" / "predictions.jsonl").read_bytes() == (tmp_path / "run" / "eval" / "predictions.jsonl").read_bytes()
    record = json.loads((adapter / "run_record.json").read_text())
    assert record["quantization_path"] == "fp32-fallback" or record["quantization_path"] == "none-fp32"
    assert record["add_bos"] == "auto" and record["base_dtype"] == "fp32"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["count"] == 8
    # The evaluate run documents itself like a fine-tune does: what was scored, on what, where, with what result.
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["command"] == "evaluate" and report["eval"]["result"] == metrics
    assert report["model"]["load"]["mode"] == "as-trained"
    assert report["model"]["load"]["run_record"] == str(adapter / "run_record.json")
    assert report["eval"]["add_bos"] == "auto"
    assert report["model"]["adapter"] == str(adapter) and report["model"]["random_weights"] is False
    data_file = report["data"]["files"][0]
    assert data_file["sha256"] == hashlib.sha256((tmp_path / "eval.jsonl").read_bytes()).hexdigest()
    assert report["environment"]["device"]["backend"] in ("cpu", "cuda", "rocm")
    assert report["environment"]["libraries"]["torch"]
    markdown = (tmp_path / "ev" / "report.md").read_text()
    assert "# Run report: evaluate" in markdown and f"- accuracy: {metrics['accuracy']:.3f}" in markdown
    assert "trainable (LoRA)" not in markdown  # no training happened in this run

    # --merge is the explicit other choice, and the report says which was done; a token budget per pass (here
    # smaller than two prompts, so one question a pass) changes the batching, not the scores.
    assert main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--merge", "--limit", "5",
                 "--data", str(tmp_path / "eval.jsonl"), "--output", str(tmp_path / "ev-merged"),
                 "--scoring", "cloze", "--device", "cpu", "--token-budget", "100"]) == 0
    merged_report = json.loads((tmp_path / "ev-merged" / "report.json").read_text())
    assert merged_report["model"]["load"]["mode"] == "merged"
    assert merged_report["eval"]["token_budget"] == 100
    assert report["eval"]["token_budget"] == CPU_EVAL_TOKEN_BUDGET  # no flag: the CPU default, recorded as used
    trained = json.loads((tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    merged = json.loads((tmp_path / "ev-merged" / "predictions.jsonl").read_text().splitlines()[0])
    assert trained["source"] == merged["source"]
    for letter, score in trained["scores"].items():
        assert merged["scores"][letter] == pytest.approx(score, abs=1e-3)


def test_evaluate_adapter_without_run_record_needs_merge(tmp_path, tiny_model_dir, capsys):
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "old" / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(adapter)
    data = write_questions(tmp_path / "eval.jsonl", 4)
    args = ["evaluate", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", str(data),
            "--device", "cpu"]
    assert main(args + ["--output", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "run_record.json" in err and "--merge" in err and "Traceback" not in err
    assert main(args + ["--output", str(tmp_path / "ev"), "--merge"]) == 0
    # A report.json beside the adapter (runs from before the record) is read instead; its BOS rule was "always".
    shutil.copy(ROOT / "tests" / "pipeline" / "data" / "old_report.json", tmp_path / "old" / "report.json")
    assert main(args + ["--output", str(tmp_path / "ev-old")]) == 0
    report = json.loads((tmp_path / "ev-old" / "report.json").read_text())
    assert report["model"]["load"]["mode"] == "as-trained" and report["eval"]["add_bos"] == "always"


def test_evaluate_missing_adapter_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    data = write_questions(tmp_path / "eval.jsonl", 4)
    (tmp_path / "empty").mkdir()
    code = main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "empty"),
                 "--data", str(data), "--output", str(tmp_path / "ev"), "--device", "cpu"])
    assert code == 2 and "has no adapter_config.json" in capsys.readouterr().err
    code = main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "nothing"),
                 "--data", str(data), "--output", str(tmp_path / "ev"), "--device", "cpu"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_unreachable_hub_id_is_a_short_error(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _recipe(tmp_path, tiny_model_dir)
    assert main(["prepare", "--recipe", str(recipe), "model.name_or_path=example-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "cannot load model 'example-org/no-such-model'" in err and "Traceback" not in err


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora: {rank: 8}\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--recipe", str(recipe)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "lora.rank" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_before_any_finetune_names_the_step_to_run_first(tmp_path, capsys):
    # compose's default evaluate job reads the demo run's adapter and data; before a fine-tune neither exists.
    code = main(["evaluate", "--model", "smollm2-135m-instruct", "--adapter", str(tmp_path / "runs/demo/adapter"),
                 "--data", str(tmp_path / "runs/demo/data/test.jsonl"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"adapter folder {tmp_path / 'runs/demo/adapter'} does not exist" in err
    assert "run python -m pipeline finetune first" in err and "make finetune" in err
