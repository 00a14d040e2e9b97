"""``python -m pipeline compare RUN_A RUN_B``: paired numbers checked by hand, clear errors on unusable input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.report import stats

SECRET_TEXT = "Patient Jane Roe, 54, MRN 0012345"  # question text must never reach a comparison


def _prediction(line: int, gold: str, predicted: str, data: str = "data/test.jsonl") -> dict:
    scores = {letter: math.log(0.1) for letter in "ABCD"}
    scores[predicted] = math.log(0.7)
    return {"index": line - 1, "source": f"{data}:{line}", "meta_info": "step1", "gold": gold,
            "predicted": predicted, "correct": gold == predicted, "scores": scores}


def _write(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _pair_of_runs(tmp_path: Path) -> tuple[Path, Path]:
    """40 questions: 20 right with both, 2 right only with A, 10 right only with B, 8 wrong with both."""
    a, b = [], []
    for i in range(40):
        gold = "ABCD"[i % 4]
        wrong = "ABCD"[(i + 1) % 4]
        right_a = i < 20 or 20 <= i < 22
        right_b = i < 20 or 22 <= i < 32
        a.append(_prediction(i + 1, gold, gold if right_a else wrong))
        # Two of the both-wrong questions change from one wrong letter to another.
        other = "ABCD"[(i + 2) % 4] if i in (38, 39) else wrong
        b.append(_prediction(i + 1, gold, gold if right_b else other, data="/elsewhere/test.jsonl"))
    return _write(tmp_path / "run-a", a), _write(tmp_path / "run-b" / "eval", b).parent


def test_compare_numbers_match_hand_computation(tmp_path, capsys):
    run_a, run_b = _pair_of_runs(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", str(run_a), str(run_b), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    assert result["count"] == 40
    assert result["table"] == {"both_correct": 20, "only_a_correct": 2, "only_b_correct": 10, "both_wrong": 8}
    assert result["accuracy_a"]["value"] == 22 / 40 and result["accuracy_b"]["value"] == 30 / 40
    assert result["accuracy_a"]["low"] == pytest.approx(stats.wilson_interval(22, 40)[0])
    # McNemar b=10, c=2: 79/2048 = 0.0386 (see test_stats).
    assert result["mcnemar_exact_p"] == pytest.approx(79 / 2048)
    d = result["difference"]
    assert d["value"] == pytest.approx(0.2)
    expected = stats.paired_difference_interval(stats.PairedTable(20, 2, 10, 8))
    assert (d["low"], d["high"]) == pytest.approx(expected[1:])
    assert 0 < d["low"] < 0.2 < d["high"] < 0.4
    changes = {c["change"] for c in result["changed"]}
    assert len(result["changed"]) == 14 and changes == {"fixed", "broken", "other wrong letter"}
    # Runs of the same file in different folders still pair: questions match by data line.
    assert result["predictions_b"].endswith("run-b/eval/predictions.jsonl")

    md = (out / "report.md").read_text()
    for needle in ("**+0.200**", "p = **0.0386**", "10 questions right only with", "B is more accurate than A",
                   "Questions whose answer changed", "`/elsewhere/test.jsonl:21`", "Newcombe"):
        assert needle in md, needle
    assert "difference +0.200" in printed and "McNemar p = 0.0386" in printed


def test_compare_without_output_prints_and_writes_nothing(tmp_path, monkeypatch, capsys):
    run_a, run_b = _pair_of_runs(tmp_path)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["compare", str(run_a), str(run_b)]) == 0
    printed = capsys.readouterr().out
    assert "B is more accurate than A" in printed and "Questions whose answer changed" in printed
    assert "difference +0.200" in printed and "report.md" not in printed.splitlines()[-1]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "compare wrote files unasked"


def test_compare_writes_no_question_text(tmp_path):
    run_a, run_b = _pair_of_runs(tmp_path)
    rows = [json.loads(line) for line in (run_a / "predictions.jsonl").read_text().splitlines()]
    rows[0]["question"] = SECRET_TEXT  # even if a predictions file carried text, only sources and letters go out
    _write(run_a, rows)
    out = tmp_path / "cmp"
    assert main(["compare", str(run_a), str(run_b), "--output", str(out)]) == 0
    for name in ("report.md", "compare.json"):
        assert SECRET_TEXT not in (out / name).read_text()


def test_identical_runs_show_no_difference(tmp_path):
    rows = [_prediction(i + 1, "A", "A" if i % 3 else "B") for i in range(30)]
    a, b = _write(tmp_path / "a", rows), _write(tmp_path / "b", rows)
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert result["mcnemar_exact_p"] == 1.0 and result["difference"]["value"] == 0 and result["changed"] == []
    assert result["difference"]["low"] < 0 < result["difference"]["high"]
    assert "no difference shown" in (tmp_path / "o" / "report.md").read_text()


def test_different_questions_are_a_clear_error(tmp_path, capsys):
    a = _write(tmp_path / "a", [_prediction(i + 1, "A", "A") for i in range(5)])
    b = _write(tmp_path / "b", [_prediction(i + 1, "A", "A") for i in range(4)])
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "did not score the same questions" in err and "line 5" in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_different_gold_letters_are_a_clear_error(tmp_path, capsys):
    a = _write(tmp_path / "a", [_prediction(1, "A", "A"), _prediction(2, "B", "B")])
    b = _write(tmp_path / "b", [_prediction(1, "A", "A"), _prediction(2, "C", "C")])
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "o")]) == 2
    assert "line 2: gold letter 'B'" in capsys.readouterr().err


def test_different_data_files_by_hash_are_refused(tmp_path, capsys):
    a = _write(tmp_path / "a", [_prediction(1, "A", "A")])
    b = _write(tmp_path / "b", [_prediction(1, "A", "A")])
    for folder, digest in ((a, "1" * 64), (b, "2" * 64)):
        (folder / "report.json").write_text(json.dumps(
            {"eval": {"file": "data/test.jsonl"}, "data": {"files": [{"path": "data/test.jsonl", "sha256": digest}]}}))
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "o")]) == 2
    assert "evaluated different data files" in capsys.readouterr().err


def test_a_broken_predictions_line_is_named(tmp_path, capsys):
    a = _write(tmp_path / "a", [_prediction(1, "A", "A")])
    (a / "predictions.jsonl").write_text(json.dumps(_prediction(1, "A", "A")) + "\n{\"source\": \"x:2\"}\n")
    b = _write(tmp_path / "b", [_prediction(1, "A", "A")])
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{a / 'predictions.jsonl'}:2" in err and "'gold'" in err


def test_a_folder_without_predictions_is_a_clear_error(tmp_path, capsys):
    b = _write(tmp_path / "b", [_prediction(1, "A", "A")])
    assert main(["compare", str(tmp_path / "nothing"), str(b), "--output", str(tmp_path / "o")]) == 2
    assert "no predictions.jsonl" in capsys.readouterr().err
