"""`python -m pipeline reproduce REPORT` on the tiny model: identical on the same stack, differences listed."""

from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main
from pipeline.report.reproduce import compare, eval_setup, margin


@pytest.fixture
def evaluated(tmp_path, tiny_model_dir, medqa_test_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(medqa_test_path), "--output", str(out),
                 "--limit", "6", "--device", "cpu"]) == 0
    return out


def test_same_stack_reproduces_identically(evaluated, tmp_path, capsys):
    capsys.readouterr()
    result = tmp_path / "cmp.json"
    assert main(["reproduce", str(evaluated / "report.json"), "--output", str(result), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "reproduced: all 6 predictions identical" in text and "same stack" in text
    data = json.loads(result.read_text())
    assert data["identical"] and data["same_stack"] and data["max_score_difference"] == 0


def test_the_run_is_rerun_with_its_token_budget(evaluated, tmp_path):
    """evaluate's default (256 questions) and the seed recipe bound each pass by a token budget; without it a
    re-run could need many times the run's memory."""
    report = json.loads((evaluated / "report.json").read_text())
    assert report["eval"]["token_budget"] and eval_setup(report, evaluated).token_budget == report["eval"]["token_budget"]
    finetune = {"command": "finetune", "eval": {"file": "x.jsonl"},
                "recipe": {"model": {"name_or_path": "m"}, "eval": {"batch_size": 256, "token_budget": 16384}}}
    setup = eval_setup(finetune, tmp_path)
    assert (setup.batch_size, setup.token_budget) == (256, 16384)
    finetune["recipe"]["eval"] = {}
    assert (eval_setup(finetune, tmp_path).batch_size, eval_setup(finetune, tmp_path).token_budget) == (8, None)


def test_a_changed_prediction_is_listed_with_margins(evaluated, capsys):
    preds = evaluated / "predictions.jsonl"
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    letters = list(rows[2]["scores"])
    rows[2]["predicted"] = next(x for x in letters if x != rows[2]["predicted"])
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Another stack: a different library version recorded in the report.
    report = json.loads((evaluated / "report.json").read_text())
    report["environment"]["libraries"]["transformers"] = "0.0.1"
    (evaluated / "report.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["reproduce", str(evaluated), "--device", "cpu"]) == 1
    text = capsys.readouterr().out
    assert "NOT identical: 1 of 6" in text and "question 2" in text and "margin" in text
    assert "another stack" in text and "library:transformers 0.0.1 ->" in text


def test_changed_data_is_refused_naming_the_file(evaluated, medqa_test_path, tmp_path, capsys):
    copy = tmp_path / "copy.jsonl"
    copy.write_text(medqa_test_path.read_text() + "\n")
    report = json.loads((evaluated / "report.json").read_text())
    report["eval"]["file"] = str(copy)
    report["data"]["files"][0]["path"] = str(copy)
    (evaluated / "report.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["reproduce", str(evaluated), "--device", "cpu"]) == 2
    assert f"{copy}: sha256 differs" in capsys.readouterr().err


def test_missing_report_is_a_clear_error(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path / "nope.json")]) == 2
    assert "no such report" in capsys.readouterr().err


def test_margin_and_compare_units():
    assert margin({"A": -1.0, "B": -1.5, "C": -3.0}) == 0.5
    old = [{"index": 0, "predicted": "A", "scores": {"A": -1.0, "B": -1.2}}]
    new = [{"index": 0, "predicted": "B", "scores": {"A": -1.3, "B": -1.1}}]
    cmp = compare(old, new, same_stack=True, stack_differences={})
    assert not cmp.identical and cmp.differing[0]["margin"] == [0.2, 0.2]
    assert cmp.max_score_difference == pytest.approx(0.3)
