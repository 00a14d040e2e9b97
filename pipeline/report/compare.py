"""``python -m pipeline compare RUN_A RUN_B``: is model B really better than model A on the same questions?

RUN_A and RUN_B are evaluation folders (``evaluate --output`` or a fine-tune's ``eval/``; a fine-tune's run folder
works too and means its ``eval/``). Writes ``report.md`` and ``compare.json`` into ``--output``: both accuracies
with Wilson intervals, the paired difference B − A with Newcombe's paired interval, the exact McNemar test and
every question that changed its answer (by ``path:line`` and letters, never its text).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

from kit import atomic
from pipeline.report.analysis import METHODS, paired
from pipeline.report.predictions import FILE, PredictionsError, load_predictions
from pipeline.report.sections import changed_table, paired_lines


def predictions_folder(run: Path) -> Path:
    """The folder holding predictions.jsonl: the run itself, or a fine-tune run's ``eval/``."""
    run = Path(run)
    if (run / FILE).is_file():
        return run
    if (run / "eval" / FILE).is_file():
        return run / "eval"
    raise PredictionsError(f"{run}: no {FILE} here or in {run / 'eval'}, expected an evaluation folder "
                           "(python -m pipeline evaluate --output DIR) or a fine-tune run folder")


def _data_hash(folder: Path) -> str | None:
    """sha256 of the evaluated data file, from the report.json beside the predictions (or one level up)."""
    for candidate in (folder / "report.json", folder.parent / "report.json"):
        try:
            report = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        eval_file = (report.get("eval") or {}).get("file")
        for facts in (report.get("data") or {}).get("files", []):
            if facts.get("path") == eval_file:
                return facts.get("sha256")
    return None


def compare(run_a: Path, run_b: Path, output: Optional[Path] = None) -> dict[str, Any]:
    """Compare two evaluations of the same questions; with ``output``, also write report.md and compare.json
    there."""
    folder_a, folder_b = predictions_folder(run_a), predictions_folder(run_b)
    hash_a, hash_b = _data_hash(folder_a), _data_hash(folder_b)
    if hash_a and hash_b and hash_a != hash_b:
        raise PredictionsError(f"{run_a} and {run_b} evaluated different data files (sha256 {hash_a[:12]}… and "
                               f"{hash_b[:12]}…), expected the same questions")
    result = paired(load_predictions(folder_a), load_predictions(folder_b), "A", "B")
    result.update(
        run_a=str(run_a), run_b=str(run_b),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        predictions_a=str(folder_a / FILE), predictions_b=str(folder_b / FILE),
        data_sha256=hash_a or hash_b, methods=METHODS,
    )
    if output is None:
        return result
    output = Path(output)
    atomic.write_text(output / "compare.json", json.dumps(result, indent=1) + "\n")
    atomic.write_text(output / "report.md", render(result))
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"# Comparison: B `{result['run_b']}` against A `{result['run_a']}`", "",
             f"- A: `{result['predictions_a']}`", f"- B: `{result['predictions_b']}`",
             f"- Same questions: {result['count']}, matched by data line, gold letters equal"
             + (f"; data file sha256 `{result['data_sha256']}`" if result.get("data_sha256") else ""),
             f"- Created {result['created_at']}", ""]
    lines += paired_lines(result, "Result", level="##")
    lines += [f"_{result['methods']}_", ""]
    verdict = _verdict(result)
    lines += [f"**Reading:** {verdict}", ""]
    if result["changed"]:
        lines += ["## Questions whose answer changed", ""]
        lines += changed_table(result["changed"], "A", "B")
    return "\n".join(lines)


def _verdict(result: dict[str, Any]) -> str:
    d = result["difference"]
    p = result["mcnemar_exact_p"]
    if p < 0.05 and d["low"] > 0:
        return "B is more accurate than A on these questions (McNemar p < 0.05, interval above 0)."
    if p < 0.05 and d["high"] < 0:
        return "B is less accurate than A on these questions (McNemar p < 0.05, interval below 0)."
    if p < 0.05 or d["low"] > 0 or d["high"] < 0:
        return "borderline: the McNemar test and the interval disagree at the 5% level; more questions would decide."
    return ("no difference shown at the 5% level: the interval still includes no change and differences in either "
            "direction.")
