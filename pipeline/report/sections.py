"""Markdown for the analysis half of report.md (numbers from ``pipeline.report.analysis.analyze``).

Only numbers, letters, group names and ``path:line`` sources: no question text reaches the report.
"""

from __future__ import annotations

from typing import Any

# Shown in report.md; the full list is always in analysis.json / compare.json.
MAX_LISTED_CHANGES = 20
_FIGURE_TITLES = {
    "loss.png": "Training loss per step and smoothed",
    "learning_rate.png": "Learning rate per step",
    "throughput.png": "Training throughput (tokens/s) per step",
    "eval_accuracy.png": "Evaluation accuracy over steps",
}


def interval(p: dict[str, Any]) -> str:
    return f"{p['low']:.3f}–{p['high']:.3f}"


def accuracy_text(p: dict[str, Any]) -> str:
    """"0.853 (95% CI 0.776–0.906, 99/116)"."""
    return f"{p['value']:.3f} (95% CI {interval(p)}, {p['correct']}/{p['count']})"


def signed(value: float) -> str:
    return f"{value:+.3f}"


def _n(count: int) -> str:
    return f"{count} question" + ("" if count == 1 else "s")


def p_value(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.4f}"


def render_analysis(analysis: dict[str, Any], pictures: list[str]) -> str:
    lines = ["## Accuracy with 95% intervals", ""]
    if analysis["evaluations"]:
        lines += _accuracy_table(analysis["evaluations"])
    lines += [f"_{analysis['methods']}_", ""]
    if "before_vs_after" in analysis:
        lines += paired_lines(analysis["before_vs_after"], "Before vs after training (same questions, paired)")
    if analysis["evaluations"]:
        final = analysis["evaluations"][-1]
        lines += _breakdown_lines(final, analysis.get("group_by"))
        lines += _confusion_lines(final, "confusion.png" in pictures)
        lines += _calibration_lines(final, "reliability.png" in pictures)
    curves = [name for name in _FIGURE_TITLES if name in pictures]
    if curves or analysis.get("tensorboard"):
        lines += ["## Training curves", ""]
        for name in curves:
            lines += [f"![{_FIGURE_TITLES[name]}](figures/{name})", ""]
        if analysis.get("tensorboard"):
            lines += ["The same history as a TensorBoard event log: `tensorboard/` in the run folder "
                      "(`tensorboard --logdir <run folder>/tensorboard`, or any tool that reads TensorBoard logs)."]
        lines.append("")
    notes = analysis.get("notes", []) + [n for e in analysis["evaluations"] for n in e.get("notes", [])]
    if notes:
        lines += ["Analysis notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _accuracy_table(evaluations: list[dict[str, Any]]) -> list[str]:
    has_norm = any("acc_norm" in e for e in evaluations)
    head = "| evaluation | after step | n | correct | accuracy | 95% CI |"
    rule = "|---|---|---|---|---|---|"
    if has_norm:
        head += " acc_norm | 95% CI |"
        rule += "---|---|"
    lines = [head + " chance |", rule + "---|"]
    for e in evaluations:
        a = e["accuracy"]
        row = f"| {e['label']} | {'-' if e['step'] is None else e['step']} | {a['count']} | {a['correct']} | " \
              f"{a['value']:.3f} | {interval(a)} |"
        if has_norm:
            n = e.get("acc_norm")
            row += f" {n['value']:.3f} | {interval(n)} |" if n else " - | - |"
        chance = e.get("chance")
        lines.append(row + (f" {chance:.3f} |" if chance is not None else " - |"))
    return lines + [""]


def paired_lines(c: dict[str, Any], title: str, level: str = "##") -> list[str]:
    d, t = c["difference"], c["table"]
    fixed = sum(1 for ch in c["changed"] if ch["change"] == "fixed")
    broken = sum(1 for ch in c["changed"] if ch["change"] == "broken")
    return [
        f"{level} {title}", "",
        f"- {c['a']}: {accuracy_text(c['accuracy_a'])}",
        f"- {c['b']}: {accuracy_text(c['accuracy_b'])}",
        f"- difference ({c['b']} − {c['a']}): **{signed(d['value'])}** (95% CI {signed(d['low'])} to "
        f"{signed(d['high'])}, {d['method']})",
        f"- McNemar exact test: {_n(t['only_b_correct'])} right only with {c['b']}, {_n(t['only_a_correct'])} right "
        f"only with {c['a']}; two-sided p = **{p_value(c['mcnemar_exact_p'])}** ({c['count']} questions, "
        f"{t['both_correct']} right and {t['both_wrong']} wrong with both)",
        f"- {len(c['changed'])} questions changed their predicted letter ({fixed} fixed, {broken} broken, "
        f"{len(c['changed']) - fixed - broken} from one wrong letter to another)",
        "",
    ]


def changed_table(changed: list[dict[str, Any]], name_a: str, name_b: str) -> list[str]:
    shown = changed[:MAX_LISTED_CHANGES]
    lines = [f"| question | source | gold | {name_a} | {name_b} | change |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['question']} | `{c['source_b']}` | {c['gold']} | {c['predicted_a']} | {c['predicted_b']} | "
              f"{c['change']} |" for c in shown]
    if len(changed) > len(shown):
        lines.append(f"| … {len(changed) - len(shown)} more (all are in the JSON file) | | | | | |")
    return lines + [""]


def _breakdown_lines(final: dict[str, Any], group_by: str | None) -> list[str]:
    lines = []
    for name, groups in final["by_group"].items():
        how = "field chosen with eval.group_by / --group-by" if name == group_by else "the data's meta_info field"
        lines += [f"## Accuracy by `{name}` ({final['label']}; {how})", "",
                  "| group | n | correct | accuracy | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {g} | {p['count']} | {p['correct']} | {p['value']:.3f} | {interval(p)} |"
                  for g, p in groups.items()]
        lines.append("")
    return lines


def _confusion_lines(final: dict[str, Any], figure: bool) -> list[str]:
    conf = final["confusion"]
    letters = conf["letters"]
    lines = [f"## Predicted vs gold letter ({final['label']})", "",
             "Multiple-choice scoring can favour a position; compare each letter's share of predictions with its "
             "share of gold answers.", ""]
    if figure:
        lines += ["![Predicted vs gold letter](figures/confusion.png)", ""]
    lines += ["| gold \\ predicted | " + " | ".join(letters) + " | share of gold |",
              "|---|" + "---|" * (len(letters) + 1)]
    for g in letters:
        lines.append(f"| **{g}** | " + " | ".join(str(conf["counts"][g][p]) for p in letters)
                     + f" | {conf['gold_share'][g]:.2f} |")
    lines.append("| share of predictions | " + " | ".join(f"{conf['predicted_share'][p]:.2f}" for p in letters)
                 + " | |")
    return lines + [""]


def _calibration_lines(final: dict[str, Any], figure: bool) -> list[str]:
    cal = final["calibration"]
    filled = [b for b in cal["bins"] if b["count"]]
    mean_conf = sum(b["confidence"] * b["count"] for b in filled) / cal["count"]
    lines = [f"## Calibration ({final['label']})", "",
             f"Expected calibration error **{cal['ece']:.3f}** over {cal['count']} questions; mean confidence "
             f"{mean_conf:.3f} against accuracy {final['accuracy']['value']:.3f} "
             f"({'over' if mean_conf > final['accuracy']['value'] else 'under'}confident on average).", ""]
    if figure:
        lines += ["![Reliability diagram](figures/reliability.png)", ""]
    lines += ["| confidence bin | n | accuracy | mean confidence |", "|---|---|---|---|"]
    lines += [f"| {b['low']:.1f}–{b['high']:.1f} | {b['count']} | {b['accuracy']:.3f} | {b['confidence']:.3f} |"
              for b in filled]
    return lines + [""]
