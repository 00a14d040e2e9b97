"""``python -m pipeline reproduce REPORT``: re-run a report's evaluation and say whether the predictions match.

A report (report.json of ``finetune`` or ``evaluate``) names the model, the adapter, the evaluation file with its
sha256, the scoring, limit and batch size, and the stack it ran on; the predictions it produced lie beside it
(``predictions.jsonl`` for evaluate, ``eval/predictions.jsonl`` for finetune). This re-runs that evaluation and
compares question by question. On the same stack (library versions, backend and device as recorded) the predicted
answers must be identical; on another stack, differences are expected to be few and close calls, so every differing
question is listed with its margin (best minus runner-up score) in the original run and in this one.

Data whose sha256 differs from the report's is refused (the comparison would mean nothing). A finetune report's
evaluation ran on the training model (LoRA unmerged); here the adapter is merged into the base weights, so scores may
differ in the last bits even on the same stack: the predictions are what must match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.core.errors import UserError


class ReproduceError(UserError, ValueError):
    """The report cannot be re-run as it stands; the message names the file or key and what was expected."""


@dataclass
class EvalSetup:
    model: str
    adapter: Optional[str]
    data: Path
    data_sha256: Optional[str]
    scoring: str
    limit: Optional[int]
    batch_size: int
    predictions: Path
    # The run's cap on padded prompt tokens a pass: without it a 256-question batch of long prompts (the seed
    # recipe's, and evaluate's default) could need many times the memory the run used.
    token_budget: Optional[int] = None


@dataclass
class Comparison:
    same_stack: bool
    stack_differences: dict[str, tuple[Any, Any]]
    count: int
    differing: list[dict[str, Any]] = field(default_factory=list)
    max_score_difference: float = 0.0

    @property
    def identical(self) -> bool:
        return not self.differing

    def to_dict(self) -> dict[str, Any]:
        return {"identical": self.identical, "same_stack": self.same_stack, "count": self.count,
                "stack_differences": {k: list(v) for k, v in self.stack_differences.items()},
                "max_score_difference": self.max_score_difference, "differing": self.differing}


def load_report(path: Path) -> tuple[dict[str, Any], Path]:
    """The report and its folder; ``path`` may be report.json or the folder holding it."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise ReproduceError(f"{file}: no such report (expected report.json written by finetune or evaluate)")
    try:
        return json.loads(file.read_text()), file.parent
    except json.JSONDecodeError as exc:
        raise ReproduceError(f"{file}: not valid JSON ({exc})") from exc


def _need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or mapping.get(key) is None:
        raise ReproduceError(f"report has no {where}.{key}: expected a report written by finetune or evaluate "
                             "with evaluation data")
    return mapping[key]


def eval_setup(report: dict[str, Any], folder: Path) -> EvalSetup:
    """What the report's evaluation ran: the same inputs for either command."""
    command = report.get("command")
    ev = _need(report, "eval", "report")
    data = Path(_need(ev, "file", "eval"))
    recorded = {f.get("path"): f.get("sha256") for f in (report.get("data") or {}).get("files", [])}
    if command == "evaluate":
        model = report.get("model") or {}
        return EvalSetup(_need(model, "name_or_path", "model"), model.get("adapter"), data, recorded.get(str(data)),
                         ev.get("scoring", "letter"), ev.get("limit"), int(ev.get("batch_size") or 8),
                         folder / "predictions.jsonl", ev.get("token_budget"))
    if command == "finetune":
        recipe = _need(report, "recipe", "report")
        model = _need(recipe, "model", "recipe")
        rev = recipe.get("eval") or {}
        return EvalSetup(_need(model, "name_or_path", "recipe.model"), str(folder / "adapter"), data,
                         recorded.get(str(data)), rev.get("scoring", ev.get("scoring", "letter")), rev.get("limit"),
                         int(rev.get("batch_size") or 8), folder / "eval" / "predictions.jsonl",
                         rev.get("token_budget"))
    raise ReproduceError(f"report command is {command!r}: expected 'finetune' or 'evaluate'")


def check_data(setup: EvalSetup) -> None:
    from pipeline.report.build import sha256_file

    if not setup.data.is_file():
        raise ReproduceError(f"{setup.data}: the report's evaluation file is missing (copy it back to that path)")
    if setup.data_sha256 and sha256_file(setup.data) != setup.data_sha256:
        raise ReproduceError(f"{setup.data}: sha256 differs from the report's {setup.data_sha256}: "
                             "this is not the data that was evaluated")


def read_predictions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ReproduceError(f"{path}: the report's predictions are missing (expected predictions.jsonl)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ReproduceError(f"{path}:{number}: not a JSON object ({exc})") from exc
    return rows


def stack_of(report: dict[str, Any]) -> dict[str, Any]:
    """The facts that decide whether two runs must agree bit for bit: libraries, backend, device, image manifest."""
    env = report.get("environment") or {}
    dev = env.get("device") or {}
    stack = {f"library:{k}": v for k, v in (env.get("libraries") or {}).items()}
    for key in ("backend", "cuda_version", "hip_version", "gpu_name", "device"):
        stack[f"device:{key}"] = dev.get(key)
    image = env.get("image") or {}
    stack["image:manifest_sha256"] = image.get("manifest_sha256")
    return stack


def margin(scores: dict[str, float]) -> Optional[float]:
    """Best minus runner-up score: how close the call was (small margins flip first on another stack)."""
    values = sorted(scores.values(), reverse=True)
    return round(values[0] - values[1], 6) if len(values) > 1 else None


def compare(original: list[dict[str, Any]], rerun: list[dict[str, Any]], same_stack: bool,
            stack_differences: dict[str, tuple[Any, Any]]) -> Comparison:
    if len(original) != len(rerun):
        raise ReproduceError(f"the report has {len(original)} predictions, the re-run {len(rerun)}: "
                             "the limit or the data differ")
    result = Comparison(same_stack, stack_differences, len(original))
    for old, new in zip(original, rerun, strict=True):
        shared = set(old.get("scores", {})) & set(new.get("scores", {}))
        for letter in shared:
            result.max_score_difference = max(result.max_score_difference,
                                              abs(old["scores"][letter] - new["scores"][letter]))
        if old.get("predicted") != new.get("predicted"):
            result.differing.append({
                "index": old.get("index"), "source": old.get("source"), "gold": old.get("gold"),
                "predicted": [old.get("predicted"), new.get("predicted")],
                "margin": [margin(old.get("scores", {})), margin(new.get("scores", {}))],
            })
    result.max_score_difference = round(result.max_score_difference, 6)
    return result


def reproduce(report_path: Path, device: str = "auto") -> Comparison:
    from pipeline.data.questions import load_questions
    from pipeline.evaluate.scoring import evaluate
    from pipeline.model.load import choose_device, load_for_eval
    from pipeline.report.build import environment_facts

    report, folder = load_report(report_path)
    setup = eval_setup(report, folder)
    check_data(setup)
    original = read_predictions(setup.predictions)
    if setup.adapter and not Path(setup.adapter).is_dir():
        raise ReproduceError(f"{setup.adapter}: the report's adapter folder is missing")
    torch_device = choose_device(device)
    record = _run_record(setup.adapter)
    # As the run scored it: the adapter's base loaded as in training (its run record), merged only without one.
    model, tokenizer, _ = load_for_eval(setup.model, setup.adapter, device=torch_device, merge=record is None,
                                        record=record)
    add_bos = (report.get("eval") or {}).get("add_bos") or (record or {}).get("add_bos") or "auto"
    result = evaluate(model, tokenizer, load_questions(setup.data), scoring=setup.scoring,  # type: ignore[arg-type]
                      batch_size=setup.batch_size, token_budget=setup.token_budget, limit=setup.limit, add_bos=add_bos)
    then, now = stack_of(report), stack_of({"environment": environment_facts(torch_device)})
    differences = {k: (then.get(k), now.get(k)) for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)}
    return compare(original, result.predictions, not differences, differences)


def render(comparison: Comparison) -> str:
    lines = []
    if comparison.identical:
        lines.append(f"reproduced: all {comparison.count} predictions identical "
                     f"(largest score difference {comparison.max_score_difference:g})")
    else:
        lines.append(f"NOT identical: {len(comparison.differing)} of {comparison.count} predictions differ "
                     f"(largest score difference {comparison.max_score_difference:g})")
        for row in comparison.differing:
            lines.append(f"  question {row['index']} ({row['source']}): predicted {row['predicted'][0]} -> "
                         f"{row['predicted'][1]} (gold {row['gold']}), margin {row['margin'][0]} -> {row['margin'][1]}")
    if comparison.same_stack:
        lines.append("same stack as the report" + ("" if comparison.identical else
                                                   ": differences here are a reproducibility failure"))
    else:
        lines.append("another stack than the report's: " + ", ".join(
            f"{k} {v[0]} -> {v[1]}" for k, v in comparison.stack_differences.items()))
    return "\n".join(lines)


__all__ = ["Comparison", "ReproduceError", "compare", "reproduce", "render"]


def _run_record(adapter: Optional[str]) -> Optional[dict[str, Any]]:
    """The adapter's run record (how its base was loaded in training), or None without adapter or record."""
    if not adapter:
        return None
    from pipeline.core.run_record import read_record

    try:
        return read_record(adapter)[0]
    except FileNotFoundError:
        return None
