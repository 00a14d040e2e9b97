"""PNG figures of a run: training curves, accuracy over steps, reliability diagram, predicted-vs-gold letters.

Each function draws one figure from numbers (never question text) and returns the PNG bytes; the caller decides
where they go (the run report writes them all into ``figures/`` in one atomic rename). matplotlib is imported
here, lazily, with the Agg backend through ``matplotlib.figure.Figure`` (no pyplot, no display, no global state),
so ``python -m pipeline --help`` stays fast and a headless node never looks for a GUI.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pipeline.report.stats import Calibration, Confusion, ema

# 7 x 3.6 inches at 110 dpi: 770 x 396 pixels, readable inline in a Markdown viewer, ~30-60 KB each.
_SIZE = (7.0, 3.6)
_DPI = 110


def _figure(size: tuple[float, float] = _SIZE) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    return fig


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    # Fixed metadata: the same numbers give the same bytes (no creation time or version in the file).
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _steps(start: int, count: int) -> list[int]:
    return list(range(start + 1, start + count + 1))


def loss_curve(losses: Sequence[float], first_step: int = 0, smoothing: float = 0.9) -> bytes:
    """Training loss per optimizer step and its debiased moving average."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = _steps(first_step, len(losses))
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="per step")
    ax.plot(steps, ema(losses, smoothing), color="tab:blue", linewidth=2,
            label=f"smoothed (moving average, weight {smoothing})")
    ax.set_title("Training loss")
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel("loss (nats per answer token)")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 50:
        ax.set_yscale("log")  # a loss that falls by orders of magnitude is unreadable on a linear axis
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def learning_rate_curve(lrs: Sequence[float], first_step: int = 0) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(_steps(first_step, len(lrs)), lrs, color="tab:orange", linewidth=2)
    ax.set_title("Learning rate (schedule)")
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(True, alpha=0.3)
    return _png(fig)


def throughput_curve(tokens_per_second: Sequence[float], first_step: int = 0, smoothing: float = 0.9) -> bytes:
    """Non-padding tokens per second of each optimizer step (all ranks)."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = _steps(first_step, len(tokens_per_second))
    ax.plot(steps, tokens_per_second, color="tab:green", alpha=0.35, linewidth=1, label="per step")
    ax.plot(steps, ema(tokens_per_second, smoothing), color="tab:green", linewidth=2, label="smoothed")
    ax.set_title("Training throughput (tokens per second)")
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel("tokens / s (non-padding, all devices)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def accuracy_curve(points: Sequence[dict[str, Any]], chance: float | None = None) -> bytes:
    """Evaluation accuracy at the steps where it ran; ``points``: {step, value, low, high} (Wilson 95%)."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = [p["step"] for p in points]
    values = [p["value"] for p in points]
    below = [p["value"] - p["low"] for p in points]
    above = [p["high"] - p["value"] for p in points]
    ax.errorbar(steps, values, yerr=[below, above], fmt="o-", color="tab:purple", capsize=4, linewidth=2,
                label="accuracy (95% Wilson interval)")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    ax.set_title("Evaluation accuracy over training")
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _png(fig)


def reliability_diagram(cal: Calibration, title: str) -> bytes:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with each bin's size."""
    fig = _figure((5.2, 4.4))
    ax = fig.add_subplot()
    width = cal.bins[0].high - cal.bins[0].low
    filled = [b for b in cal.bins if b.count]
    ax.bar([b.low for b in filled], [b.accuracy for b in filled], width=width, align="edge",
           color="tab:blue", alpha=0.7, edgecolor="black", label="accuracy in bin")
    ax.plot([b.confidence for b in filled], [b.accuracy for b in filled], "o", color="tab:red",
            label="bin: mean confidence, accuracy")
    for b in filled:
        ax.annotate(f"n={b.count}", (b.low + width / 2, min(0.97, (b.accuracy or 0) + 0.02)), ha="center",
                    fontsize=7)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nECE {cal.ece:.3f} over {cal.count} questions")
    ax.set_xlabel("confidence: probability of the chosen option")
    ax.set_ylabel("accuracy (fraction correct)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def confusion_heatmap(conf: Confusion, title: str) -> bytes:
    """Counts of gold letter (rows) against predicted letter (columns)."""
    letters = conf.letters
    matrix = [[conf.counts[g][p] for p in letters] for g in letters]
    fig = _figure((4.6, 4.2))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > top / 2 else "black", fontsize=9)
    ax.set_xticks(range(len(letters)), labels=letters)
    ax.set_yticks(range(len(letters)), labels=letters)
    ax.set_xlabel("predicted letter")
    ax.set_ylabel("gold letter")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="questions")
    return _png(fig)
