"""The statistics behind the run report: intervals, paired tests, calibration, breakdowns. Pure Python, no torch.

Methods, chosen for small evaluation sets (a few hundred questions, accuracies near 0 or 1 in some groups), where
the textbook normal ("Wald") interval is too narrow and can leave [0, 1]:

* one accuracy: the **Wilson score interval** (Wilson 1927; recommended over Wald by Brown, Cai & DasGupta,
  Statistical Science 16(2), 2001). Deterministic, so two people computing it from the same predictions agree.
* the difference of two accuracies on the same questions: **Newcombe's hybrid score interval for paired
  proportions** (Newcombe 1998, Statistics in Medicine 17:2635-2650, method 10): Wilson intervals of the two
  accuracies combined with the continuity-corrected phi correlation of the paired table. Also deterministic, and
  it keeps the pairing (an unpaired interval would be far too wide for two models scored on the same questions).
* whether two models differ: the **exact McNemar test**, i.e. a two-sided binomial test of the discordant pairs
  (questions only one model got right) against p = 1/2; exact rather than the chi-square approximation because
  the discordant count is often small.
* calibration: **expected calibration error** over equal-width confidence bins (Guo et al., ICML 2017):
  sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Two-sided 95%: the 0.975 quantile of the standard normal.
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Proportion:
    """``correct`` of ``count`` with its Wilson interval [low, high]."""

    correct: int
    count: int
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson_interval(correct: int, count: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of ``correct`` successes in ``count`` trials (z = 1.96: 95%)."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if not 0 <= correct <= count:
        raise ValueError(f"correct must be between 0 and count ({count}), got {correct}")
    p = correct / count
    z2 = z * z
    centre = (p + z2 / (2 * count)) / (1 + z2 / count)
    half = z * math.sqrt(p * (1 - p) / count + z2 / (4 * count * count)) / (1 + z2 / count)
    # Clamp the last ulp: at p = 0 or 1 the formula gives the bound up to rounding.
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(correct: int, count: int, z: float = Z_95) -> Proportion:
    low, high = wilson_interval(correct, count, z)
    return Proportion(correct, count, correct / count, low, high)


@dataclass(frozen=True)
class PairedTable:
    """Two models' correctness on the same questions: both right, only A right, only B right, both wrong."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def count(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @classmethod
    def from_outcomes(cls, correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedTable:
        if len(correct_a) != len(correct_b):
            raise ValueError(f"paired outcomes differ in length: {len(correct_a)} and {len(correct_b)}")
        tally = Counter(zip(map(bool, correct_a), map(bool, correct_b), strict=False))
        return cls(tally[True, True], tally[True, False], tally[False, True], tally[False, False])


def paired_difference_interval(table: PairedTable, z: float = Z_95) -> tuple[float, float, float]:
    """(difference, low, high) of accuracy B minus accuracy A: Newcombe's method 10 for paired proportions."""
    n = table.count
    if n <= 0:
        raise ValueError("a paired table needs at least one question")
    # Newcombe's notation: p1 = B's accuracy, p2 = A's; e both right, f only p1's model right, g only p2's, h neither.
    e, f, g, h = table.both, table.only_b, table.only_a, table.neither
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = wilson_interval(e + f, n, z)
    l2, u2 = wilson_interval(e + g, n, z)
    denominator = (e + f) * (g + h) * (e + g) * (f + h)
    phi = 0.0
    if denominator > 0:
        cross = e * h - f * g
        # Newcombe's continuity correction of phi: a positive correlation is shrunk by n/2 (never below 0).
        corrected = max(cross - n / 2, 0.0) if cross > 0 else float(cross)
        phi = corrected / math.sqrt(denominator)
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    difference = p1 - p2
    return difference, max(-1.0, difference - delta), min(1.0, difference + epsilon)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs against p = 1/2 (1.0 when none)."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be non-negative, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    # Integer true division is correctly rounded even for the huge numbers of large n.
    return min(1.0, 2 * tail / 2**n)


def softmax(scores: Sequence[float]) -> list[float]:
    """Probabilities from log-likelihoods (the model's distribution restricted to the answer options)."""
    if not scores:
        raise ValueError("softmax of no scores")
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    accuracy: float | None
    confidence: float | None


@dataclass(frozen=True)
class Calibration:
    ece: float
    count: int
    bins: list[CalibrationBin]

    def to_dict(self) -> dict[str, Any]:
        return {"ece": self.ece, "count": self.count, "bins": [asdict(b) for b in self.bins]}


def calibration(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> Calibration:
    """Expected calibration error over ``bins`` equal-width bins of [0, 1] (a confidence of 1.0 is in the last)."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} outcomes")
    if not confidences:
        raise ValueError("calibration of no predictions")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(confidences):
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"confidence {c!r} of prediction {i} is outside [0, 1]")
        members[min(int(c * bins), bins - 1)].append(i)
    n = len(confidences)
    ece, out = 0.0, []
    for b, idx in enumerate(members):
        if idx:
            acc = sum(bool(correct[i]) for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            ece += len(idx) / n * abs(acc - conf)
            out.append(CalibrationBin(b / bins, (b + 1) / bins, len(idx), acc, conf))
        else:
            out.append(CalibrationBin(b / bins, (b + 1) / bins, 0, None, None))
    return Calibration(ece, n, out)


def by_group(groups: Iterable[Hashable], correct: Iterable[bool]) -> dict[Hashable, Proportion]:
    """Accuracy with its Wilson interval per group label, groups in sorted order (by their text)."""
    tally: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])
    for group, ok in zip(groups, correct, strict=False):
        tally[group][0] += bool(ok)
        tally[group][1] += 1
    return {g: proportion(*tally[g]) for g in sorted(tally, key=str)}


@dataclass(frozen=True)
class Confusion:
    """``counts[gold][predicted]`` over ``letters``; the share of each letter among golds and predictions."""

    letters: list[str]
    counts: dict[str, dict[str, int]]

    def predicted_share(self) -> dict[str, float]:
        total = sum(sum(row.values()) for row in self.counts.values())
        return {p: sum(self.counts[g][p] for g in self.letters) / total for p in self.letters}

    def gold_share(self) -> dict[str, float]:
        total = sum(sum(row.values()) for row in self.counts.values())
        return {g: sum(self.counts[g].values()) / total for g in self.letters}

    def to_dict(self) -> dict[str, Any]:
        return {"letters": self.letters, "counts": self.counts, "gold_share": self.gold_share(),
                "predicted_share": self.predicted_share()}


def confusion(gold: Sequence[str], predicted: Sequence[str]) -> Confusion:
    """Counts of (gold letter, predicted letter): a column far above its gold share is position bias."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold letters but {len(predicted)} predictions")
    if not gold:
        raise ValueError("confusion of no predictions")
    letters = sorted(set(gold) | set(predicted))
    counts = {g: {p: 0 for p in letters} for g in letters}
    for g, p in zip(gold, predicted, strict=False):
        counts[g][p] += 1
    return Confusion(letters, counts)


def ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): early points are not pulled towards 0."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    out, last = [], 0.0
    for i, v in enumerate(values, start=1):
        last = weight * last + (1 - weight) * v
        out.append(last / (1 - weight**i))
    return out
