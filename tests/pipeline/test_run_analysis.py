"""The analysis half of report.md: intervals, breakdowns (meta_info and eval.group_by), confusion, calibration,
curves and the TensorBoard log, from predictions.jsonl and the training history."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.finetune import finetune
from pipeline.report import run_log, stats
from pipeline.report.analysis import analyze, write_run_analysis

from .recipe_helpers import tiny_recipe, write_questions


def _question_rows(n: int) -> list[dict]:
    return [{"question": f"Q{i}", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "ABCD"[i % 4],
             "meta_info": "step1" if i < n // 2 else "step2&3", "category": "cardiology" if i % 2 else "renal"}
            for i in range(n)]


def _predictions(data: Path, rows: list[dict], right: set[int], confident: float) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        gold = row["answer_idx"]
        predicted = gold if i in right else "A" if gold != "A" else "B"
        rest = (1 - confident) / 3
        scores = {letter: math.log(confident if letter == predicted else rest) for letter in "ABCD"}
        out.append({"index": i, "source": f"{data}:{i + 1}", "meta_info": row["meta_info"], "gold": gold,
                    "predicted": predicted, "correct": predicted == gold, "scores": scores})
    return out


def _fake_run(tmp_path: Path, n: int = 20) -> tuple[Path, dict]:
    rows = _question_rows(n)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    for folder, right, confident in (("eval-before", {0, 1, 2, 3, 4}, 0.4), ("eval", set(range(3, 18)), 0.8)):
        (run / folder).mkdir(parents=True)
        lines = _predictions(data, rows, right, confident)
        (run / folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in lines))
    report = {
        "command": "finetune", "started_at": "2026-11-30T00:00:00+00:00",
        "recipe": {"eval": {"group_by": "category"}},
        "training": {"steps": 4, "losses": [2.0, 1.0, 0.5, 0.4], "lrs": [1e-3, 1e-3, 5e-4, 0.0],
                     "step_tokens": [100, 100, 100, 100], "step_seconds": [0.5, 0.5, 0.25, 0.25]},
        "eval": {"scoring": "letter", "before": {"count": n, "chance_accuracy": 0.25},
                 "after": {"count": n, "chance_accuracy": 0.25}},
    }
    return run, report


def test_analysis_numbers(tmp_path):
    run, report = _fake_run(tmp_path)
    analysis = analyze(run, report)
    before, after = analysis["evaluations"]
    assert (before["label"], before["step"], after["label"], after["step"]) == ("before training", 0,
                                                                                "after training", 4)
    assert after["accuracy"] == stats.proportion(15, 20).to_dict()
    # meta_info: questions 0-9 step1 (right: 3..9 = 7), 10-19 step2&3 (right: 10..17 = 8)
    assert after["by_group"]["meta_info"]["step1"]["correct"] == 7
    assert after["by_group"]["meta_info"]["step2&3"]["correct"] == 8
    # eval.group_by "category", read back from the data rows: odd rows cardiology.
    category = after["by_group"]["category"]
    assert set(category) == {"cardiology", "renal"} and category["cardiology"]["count"] == 10
    assert category["cardiology"]["correct"] == sum(1 for i in range(3, 18) if i % 2)
    # Every prediction has confidence 0.8: one bin, ECE = |0.75 - 0.8|.
    assert after["calibration"]["ece"] == pytest.approx(0.05)
    assert before["calibration"]["ece"] == pytest.approx(abs(0.25 - 0.4))
    assert sum(after["confusion"]["counts"]["B"].values()) == 5
    paired = analysis["before_vs_after"]
    assert paired["table"] == {"both_correct": 2, "only_a_correct": 3, "only_b_correct": 13, "both_wrong": 2}
    assert paired["mcnemar_exact_p"] == pytest.approx(stats.mcnemar_exact_p(3, 13))
    assert analysis["notes"] == []


def test_report_files_and_markdown(tmp_path):
    run, report = _fake_run(tmp_path)
    md = write_run_analysis(run, report)
    for name in ("loss.png", "learning_rate.png", "throughput.png", "eval_accuracy.png", "reliability.png",
                 "confusion.png"):
        assert (run / "figures" / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"](figures/{name})" in md, name
    scalars = run_log.read_scalars(run / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert scalars["eval/accuracy"] == [(0, 0.25), (4, 0.75)]
    assert scalars["train/tokens_per_second"][2] == (3, 400.0)
    saved = json.loads((run / "analysis.json").read_text())
    assert saved["evaluations"][1]["accuracy"]["correct"] == 15
    for needle in ("## Accuracy with 95% intervals", "| after training | 4 | 20 | 15 | 0.750 |", "Wilson",
                   "## Before vs after training", "McNemar", "## Accuracy by `meta_info`",
                   "## Accuracy by `category` (after training; field chosen with eval.group_by / --group-by)",
                   "| cardiology | 10 |",
                   "## Predicted vs gold letter", "## Calibration", "Expected calibration error **0.050**",
                   "## Training curves", "tensorboard"):
        assert needle in md, needle
    assert "Q1" not in md  # question text never reaches the report


def test_missing_predictions_and_unreadable_group_data_become_notes(tmp_path):
    run, report = _fake_run(tmp_path)
    (run / "eval-before" / "predictions.jsonl").unlink()
    (tmp_path / "test.jsonl").unlink()
    analysis = analyze(run, report)
    assert [e["label"] for e in analysis["evaluations"]] == ["after training"]
    assert "before training" in analysis["notes"][0] and "cannot read" in analysis["notes"][0]
    assert "eval.group_by 'category'" in analysis["evaluations"][0]["notes"][0]
    assert "category" not in analysis["evaluations"][0]["by_group"]


def test_stale_predictions_of_another_size_are_left_out(tmp_path):
    run, report = _fake_run(tmp_path)
    report["eval"]["after"]["count"] = 7
    analysis = analyze(run, report)
    assert [e["label"] for e in analysis["evaluations"]] == ["before training"]
    assert "holds 20 predictions but the metrics count 7" in " ".join(analysis["notes"])


def test_finetune_report_shows_the_analysis(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path, eval_rows=8,
                         extra=["eval.before_training=true", "eval.group_by=answer_idx"])
    report = finetune(recipe)
    run = tmp_path / "run"
    md = (run / "report.md").read_text()
    for needle in ("# Run report: finetune", "## Accuracy with 95% intervals", "## Before vs after training",
                   "## Accuracy by `answer_idx`", "## Calibration", "![Training loss per step and smoothed]"):
        assert needle in md, needle
    after = report["eval"]["after"]
    low, high = stats.wilson_interval(after["correct"], after["count"])
    assert f"- after training: {after['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f})" in md  # the headline too
    assert len(report["training"]["step_seconds"]) == len(report["training"]["step_tokens"]) == 6
    back = run_log.read_scalars(run / "tensorboard")
    assert [v for _, v in back["train/loss"]] == pytest.approx(report["training"]["losses"], rel=1e-6)
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(
        ["confusion.png", "eval_accuracy.png", "learning_rate.png", "loss.png", "reliability.png", "throughput.png"])


def test_evaluate_command_report_breaks_down_by_group_by_field(tiny_model_dir, tmp_path):
    data = write_questions(tmp_path / "eval.jsonl", 12)
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "ev"),
                 "--group-by", "answer", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["eval"]["group_by"] == "answer"
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "| result | - | 12 |" in md
    assert "## Accuracy by `answer` (result; field chosen with eval.group_by / --group-by)" in md
    assert "| statin |" in md and "## Training curves" not in md  # no training in an evaluate run
    analysis = json.loads((tmp_path / "ev" / "analysis.json").read_text())
    groups = analysis["evaluations"][0]["by_group"]["answer"]
    assert sum(g["count"] for g in groups.values()) == 12
    assert not (tmp_path / "ev" / "tensorboard").exists()
