"""The analysis half of a run report: how sure each accuracy is, where the model fails, how well its confidence
matches its accuracy, and how training went, from ``predictions.jsonl`` and the report's training history.

``write_run_analysis(run_dir, report)`` is the one entry point (called by the report writer): it writes
``figures/*.png``, ``tensorboard/`` (the history as a TensorBoard event log) and ``analysis.json`` into the run
folder, each atomically, and returns the Markdown sections for report.md. Methods are in ``pipeline.report.stats``;
figures contain numbers and letters only, never question text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kit import atomic
from pipeline.report import figures, run_log, stats
from pipeline.report.predictions import PredictionsError, confidence, data_field, load_predictions, pair
from pipeline.report.sections import render_analysis

FIGURES = "figures"
ANALYSIS_FILE = "analysis.json"
METHODS = ("95% intervals: Wilson score interval for each accuracy; Newcombe's hybrid score interval (method 10, "
           "1998) for a paired difference; exact two-sided McNemar test for paired changes. Calibration: confidence "
           "is the softmax over the options' log-likelihoods of the chosen option; ECE over 10 equal-width bins.")


@dataclass
class Evaluation:
    label: str  # "before training", "after training", "result"
    folder: Path
    step: int | None  # optimizer step it ran after (None for a stand-alone evaluation)
    metrics: dict[str, Any]


def evaluations(run_dir: Path, report: dict[str, Any]) -> list[Evaluation]:
    """The evaluations this report covers, in order, where their predictions should be."""
    ev = report.get("eval") or {}
    steps = (report.get("training") or {}).get("steps")
    found = []
    for key, label, folder, step in (("before", "before training", "eval-before", 0),
                                     ("after", "after training", "eval", steps),
                                     ("result", "result", ".", None)):
        if ev.get(key):
            found.append(Evaluation(label, Path(run_dir) / folder, step, ev[key]))
    return found


def group_by_field(report: dict[str, Any]) -> str | None:
    """The data-row field to break accuracy down by: ``eval.group_by`` of the recipe or of ``evaluate``."""
    return (report.get("eval") or {}).get("group_by") or ((report.get("recipe") or {}).get("eval") or {}).get(
        "group_by")


def summarize(predictions: list[dict[str, Any]], group_field: str | None = None) -> dict[str, Any]:
    """Every number of one evaluation: accuracy (and acc_norm) with intervals, breakdowns, confusion, calibration."""
    correct = [p["correct"] for p in predictions]
    out: dict[str, Any] = {"accuracy": stats.proportion(sum(correct), len(correct)).to_dict()}
    if all("correct_norm" in p for p in predictions):
        right_norm = sum(bool(p["correct_norm"]) for p in predictions)
        out["acc_norm"] = stats.proportion(right_norm, len(predictions)).to_dict()
    groups: dict[str, Any] = {}
    notes: list[str] = []
    if any(p.get("meta_info") is not None for p in predictions):
        labels = [p.get("meta_info") if p.get("meta_info") is not None else "(missing)" for p in predictions]
        groups["meta_info"] = _groups(labels, correct)
    if group_field and group_field != "meta_info":
        labels, problem = data_field(predictions, group_field)
        if problem:
            notes.append(f"eval.group_by '{group_field}': {problem}")
        else:
            groups[group_field] = _groups(labels, correct)
    out["by_group"] = groups
    golds, chosen = [p["gold"] for p in predictions], [p["predicted"] for p in predictions]
    out["confusion"] = stats.confusion(golds, chosen).to_dict()
    out["calibration"] = stats.calibration([confidence(p) for p in predictions], correct).to_dict()
    out["notes"] = notes
    return out


def _groups(labels: list[str], correct: list[bool]) -> dict[str, Any]:
    return {str(k): v.to_dict() for k, v in stats.by_group(labels, correct).items()}


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], name_a: str, name_b: str) -> dict[str, Any]:
    """B against A on the same questions: both accuracies, difference (B - A) with interval, McNemar, changes."""
    matched = pair(a, b, name_a, name_b)
    table = stats.PairedTable.from_outcomes([p["correct"] for p in matched.a], [p["correct"] for p in matched.b])
    difference, low, high = stats.paired_difference_interval(table)
    changed = [
        {"question": key, "source_a": pa["source"], "source_b": pb["source"], "gold": pa["gold"],
         "predicted_a": pa["predicted"], "predicted_b": pb["predicted"],
         "change": "fixed" if pb["correct"] and not pa["correct"] else "broken" if pa["correct"] and not pb["correct"]
         else "other wrong letter"}
        for key, pa, pb in zip(matched.keys, matched.a, matched.b, strict=False) if pa["predicted"] != pb["predicted"]
    ]
    return {
        "a": name_a, "b": name_b, "count": table.count,
        "accuracy_a": stats.proportion(table.both + table.only_a, table.count).to_dict(),
        "accuracy_b": stats.proportion(table.both + table.only_b, table.count).to_dict(),
        "table": {"both_correct": table.both, "only_a_correct": table.only_a, "only_b_correct": table.only_b,
                  "both_wrong": table.neither},
        "difference": {"value": difference, "low": low, "high": high, "method": "Newcombe hybrid score (paired)"},
        "mcnemar_exact_p": stats.mcnemar_exact_p(table.only_a, table.only_b),
        "changed": changed,
    }


def analyze(run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """All numbers of the report's analysis (what analysis.json holds); problems become notes, not failures."""
    field = group_by_field(report)
    result: dict[str, Any] = {"methods": METHODS, "group_by": field, "evaluations": [], "notes": []}
    loaded: dict[str, list[dict[str, Any]]] = {}
    for ev in evaluations(run_dir, report):
        try:
            predictions = load_predictions(ev.folder)
        except PredictionsError as exc:
            result["notes"].append(f"{ev.label}: {exc}")
            continue
        if ev.metrics.get("count") not in (None, len(predictions)):
            result["notes"].append(f"{ev.label}: {ev.folder} holds {len(predictions)} predictions but the metrics "
                                   f"count {ev.metrics['count']}: left out (a file from another run?)")
            continue
        loaded[ev.label] = predictions
        summary = summarize(predictions, field)
        result["evaluations"].append({"label": ev.label, "step": ev.step, "folder": str(ev.folder),
                                      "chance": ev.metrics.get("chance_accuracy"), **summary})
    if "before training" in loaded and "after training" in loaded:
        try:
            result["before_vs_after"] = paired(loaded["before training"], loaded["after training"],
                                               "before training", "after training")
        except PredictionsError as exc:
            result["notes"].append(f"before vs after: {exc}")
    training = report.get("training") or {}
    if training.get("losses"):
        result["training"] = {"tokens_per_second": run_log.tokens_per_second(training)}
    return result


def write_run_analysis(run_dir: Path, report: dict[str, Any],
                       redact: Callable[[str], str] = lambda text: text) -> str:
    """Write figures/, tensorboard/ and analysis.json into ``run_dir``; return the Markdown sections for report.md.

    ``redact`` is the report writer's secret filter, passed in (not imported) so the import graph has no loop.
    """
    run_dir = Path(run_dir)
    analysis = analyze(run_dir, report)
    training = report.get("training") or {}
    curve = [{"step": e["step"], **e["accuracy"]} for e in analysis["evaluations"] if e["step"] is not None]
    pictures = _draw(analysis, training, curve)
    if pictures:
        with atomic.folder(run_dir / FIGURES) as tmp:
            for name, png in pictures.items():
                (tmp / name).write_bytes(png)
    if training.get("losses"):
        run_log.write_event_log(run_dir, run_log.training_scalars(training, curve),
                                run_log.step_walltimes(training, report.get("started_at")))
        analysis["tensorboard"] = str(run_dir / run_log.FOLDER)
    analysis["figures"] = sorted(pictures)
    atomic.write_text(run_dir / ANALYSIS_FILE, redact(json.dumps(analysis, indent=1, default=str)) + "\n")
    return render_analysis(analysis, sorted(pictures))


def _draw(analysis: dict[str, Any], training: dict[str, Any], curve: list[dict[str, Any]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if training.get("losses"):
        out["loss.png"] = figures.loss_curve(training["losses"])
        if training.get("lrs"):
            out["learning_rate.png"] = figures.learning_rate_curve(training["lrs"])
        rates = analysis.get("training", {}).get("tokens_per_second") or {}
        if rates:
            out["throughput.png"] = figures.throughput_curve(list(rates.values()), first_step=min(rates) - 1)
        if curve:
            chance = next((e["chance"] for e in analysis["evaluations"] if e.get("chance") is not None), None)
            out["eval_accuracy.png"] = figures.accuracy_curve(curve, chance)
    if analysis["evaluations"]:
        final = analysis["evaluations"][-1]
        cal = stats.Calibration(final["calibration"]["ece"], final["calibration"]["count"],
                                [stats.CalibrationBin(**b) for b in final["calibration"]["bins"]])
        out["reliability.png"] = figures.reliability_diagram(cal, f"Reliability, {final['label']}")
        conf = stats.Confusion(final["confusion"]["letters"], final["confusion"]["counts"])
        out["confusion.png"] = figures.confusion_heatmap(conf, f"Predicted vs gold letter, {final['label']}")
    return out
