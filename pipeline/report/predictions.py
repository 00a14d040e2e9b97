"""Read an evaluation's ``predictions.jsonl`` back, pair two evaluations question by question, and look up a
field of the evaluated data rows for a breakdown.

What a prediction line holds is written by ``pipeline.evaluate.scoring`` (index, source ``path:line``, meta_info,
gold and predicted letters, correct, scores: letter -> summed log-likelihood, and for cloze
predicted_norm/correct_norm).
Everything the report computes comes from these lines; the question text is never needed and never copied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.report.stats import softmax

FILE = "predictions.jsonl"
_REQUIRED = {"source": str, "gold": str, "predicted": str, "correct": bool, "scores": dict}


class PredictionsError(UserError, ValueError):
    """A predictions file (or a pair of them) cannot be used; the message names the file and line."""


def load_predictions(path: Path) -> list[dict[str, Any]]:
    """Every line of a predictions.jsonl, checked for the fields the report needs (file:line on a problem)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PredictionsError(f"{path}: cannot read ({exc.strerror or exc}), expected the {FILE} an evaluation "
                               "wrote") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionsError(f"{where}: not valid JSON ({exc.msg}), expected one prediction object a line") \
                from exc
        if not isinstance(row, dict):
            raise PredictionsError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key, kind in _REQUIRED.items():
            if not isinstance(row.get(key), kind):
                raise PredictionsError(f"{where}: '{key}' is {row.get(key)!r}, expected a {kind.__name__}")
        numbers = all(isinstance(v, (int, float)) for v in row["scores"].values())
        if row["predicted"] not in row["scores"] or not numbers:
            raise PredictionsError(f"{where}: 'scores' must map every option letter (including the predicted "
                                   f"{row['predicted']!r}) to a log-likelihood")
        rows.append(row)
    if not rows:
        raise PredictionsError(f"{path}: no predictions, expected one JSON object per evaluated question")
    return rows


def confidence(prediction: dict[str, Any]) -> float:
    """The probability the model gives its chosen option: softmax over the options' log-likelihoods."""
    letters = list(prediction["scores"])
    probabilities = softmax([float(prediction["scores"][letter]) for letter in letters])
    return probabilities[letters.index(prediction["predicted"])]


def question_key(prediction: dict[str, Any]) -> str:
    """Which question this is, independent of where the data file lay: its line number, else its index."""
    source = prediction.get("source", "")
    _, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return f"line {line}"
    return f"index {prediction.get('index')}"


@dataclass
class Pairing:
    keys: list[str]
    a: list[dict[str, Any]]
    b: list[dict[str, Any]]


def pair(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], name_a: str = "A", name_b: str = "B") -> Pairing:
    """Match two evaluations question by question; both must hold the same questions with the same gold letters."""
    by_key_a = {question_key(p): p for p in a}
    by_key_b = {question_key(p): p for p in b}
    if len(by_key_a) != len(a) or len(by_key_b) != len(b):
        raise PredictionsError("a predictions file lists the same question twice, expected each question once")
    only_a = sorted(set(by_key_a) - set(by_key_b))
    only_b = sorted(set(by_key_b) - set(by_key_a))
    if only_a or only_b:
        raise PredictionsError(
            f"{name_a} and {name_b} did not score the same questions ({len(a)} and {len(b)}; "
            f"{len(only_a)} only in {name_a}, e.g. {only_a[:1]}; {len(only_b)} only in {name_b}, e.g. {only_b[:1]}): "
            "expected two evaluations of the same data file with the same --limit")
    keys = [question_key(p) for p in a]
    for key in keys:
        if by_key_a[key]["gold"] != by_key_b[key]["gold"]:
            raise PredictionsError(
                f"{key}: gold letter {by_key_a[key]['gold']!r} in {name_a} but {by_key_b[key]['gold']!r} in "
                f"{name_b}, expected the same data file (same questions in the same order)")
    return Pairing(keys, [by_key_a[k] for k in keys], [by_key_b[k] for k in keys])


def data_field(predictions: Sequence[dict[str, Any]], field: str) -> tuple[list[str], str | None]:
    """The value of ``field`` in each prediction's data row (read back from its ``source`` path:line).

    Returns (labels, problem): a row without the field is labelled "(missing)"; a data file that cannot be read
    any more gives no labels and a sentence saying why, so the report can say it instead of failing.
    """
    cache: dict[str, list[str]] = {}
    labels = []
    for prediction in predictions:
        path, sep, line = prediction["source"].rpartition(":")
        if not sep or not line.isdigit():
            return [], f"prediction {prediction.get('index')} has no path:line source to read '{field}' from"
        if path not in cache:
            try:
                cache[path] = Path(path).read_text(encoding="utf-8").split("\n")
            except OSError as exc:
                return [], f"cannot read the data file {path} for '{field}' ({exc.strerror or exc})"
        lines = cache[path]
        number = int(line)
        try:
            row = json.loads(lines[number - 1]) if 0 < number <= len(lines) else None
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            return [], f"{path}:{number} is no longer the JSON row that was evaluated (has the file changed?)"
        value = row.get(field)
        labels.append("(missing)" if value is None else value if isinstance(value, str) else json.dumps(value))
    return labels, None
