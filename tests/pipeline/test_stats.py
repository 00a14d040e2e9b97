"""The report's statistics against values computed by hand or published with the method."""

from __future__ import annotations

import math

import pytest

from pipeline.report import stats


def test_wilson_interval_of_67_in_100_by_hand():
    # z = 1.959964, z^2 = 3.841459; p = 0.67, n = 100:
    # centre = (0.67 + 3.841459/200) / (1 + 3.841459/100) = 0.689207 / 1.038415 = 0.663711
    # half   = 1.959964 * sqrt(0.002211 + 0.0000960) / 1.038415 = 1.959964 * 0.048032 / 1.038415 = 0.090658
    low, high = stats.wilson_interval(67, 100)
    assert low == pytest.approx(0.663711 - 0.090658, abs=3e-6) == pytest.approx(0.5731, abs=1e-4)
    assert high == pytest.approx(0.663711 + 0.090658, abs=3e-6) == pytest.approx(0.7544, abs=1e-4)


def test_wilson_interval_at_zero_and_all_correct():
    # k = 0: the interval is [0, z^2 / (n + z^2)]; k = n mirrors it.
    z2 = stats.Z_95**2
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert stats.wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))


@pytest.mark.parametrize("correct,count", [(1, 0), (-1, 5), (6, 5)])
def test_wilson_interval_rejects_impossible_counts(correct, count):
    with pytest.raises(ValueError, match="count|correct"):
        stats.wilson_interval(correct, count)


def test_exact_mcnemar_p_value_by_hand():
    # b = 10, c = 2: P(X <= 2) for X ~ Bin(12, 1/2) = (1 + 12 + 66) / 4096; two-sided doubles it = 79/2048.
    assert stats.mcnemar_exact_p(10, 2) == pytest.approx(79 / 2048) == pytest.approx(0.0386, abs=1e-4)
    assert stats.mcnemar_exact_p(2, 10) == stats.mcnemar_exact_p(10, 2)
    assert stats.mcnemar_exact_p(5, 5) == 1.0  # capped: the doubled tail passes 1
    assert stats.mcnemar_exact_p(0, 0) == 1.0  # no discordant question: no evidence either way
    assert stats.mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)
    # Large counts stay exact (big-integer arithmetic), and tiny p-values do not underflow to garbage.
    assert 0 < stats.mcnemar_exact_p(600, 400) < 1e-9


@pytest.mark.parametrize("e,f,g,h,low,high", [
    # Newcombe (1998), Statistics in Medicine 17:2635-2650, method 10, the paper's worked examples:
    # e both, f only the first, g only the second, h neither; difference (f - g) / n.
    (36, 12, 2, 0, 0.0569, 0.3404),
    (18, 12, 2, 18, 0.0562, 0.3290),
    (53, 0, 0, 1, -0.0729, 0.0729),
])
def test_paired_difference_interval_matches_newcombe_1998(e, f, g, h, low, high):
    table = stats.PairedTable(both=e, only_a=g, only_b=f, neither=h)  # B plays Newcombe's first proportion
    difference, lo, hi = stats.paired_difference_interval(table)
    assert difference == pytest.approx((f - g) / (e + f + g + h))
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_paired_table_from_outcomes_and_swapping_models_mirrors_the_interval():
    a = [True, True, False, False, True, False]
    b = [True, False, True, True, True, False]
    table = stats.PairedTable.from_outcomes(a, b)
    assert (table.both, table.only_a, table.only_b, table.neither) == (2, 1, 2, 1)
    d, lo, hi = stats.paired_difference_interval(table)
    d2, lo2, hi2 = stats.paired_difference_interval(stats.PairedTable.from_outcomes(b, a))
    assert d == pytest.approx(-d2) and lo == pytest.approx(-hi2) and hi == pytest.approx(-lo2)


def test_expected_calibration_error_by_hand():
    # 10 bins. 0.91 and 0.99 share bin 9: accuracy 1/2, confidence 0.95 -> 2/4 * 0.45 = 0.225;
    # 0.35 (right) in bin 3: 1/4 * |1 - 0.35| = 0.1625; 0.62 (wrong) in bin 6: 1/4 * 0.62 = 0.155. Sum 0.5425.
    cal = stats.calibration([0.91, 0.99, 0.35, 0.62], [True, False, True, False])
    assert cal.ece == pytest.approx(0.5425)
    assert cal.count == 4 and len(cal.bins) == 10
    assert [b.count for b in cal.bins] == [0, 0, 0, 1, 0, 0, 1, 0, 0, 2]
    assert cal.bins[9].accuracy == 0.5 and cal.bins[9].confidence == pytest.approx(0.95)
    assert cal.bins[0].accuracy is None


def test_calibration_edges_and_errors():
    assert [b.count for b in stats.calibration([1.0, 0.0], [True, False]).bins][::9] == [1, 1]
    assert stats.calibration([1.0, 0.0], [True, False]).ece == 0.0  # certain and right, zero and wrong
    with pytest.raises(ValueError, match="outside"):
        stats.calibration([1.2], [True])
    with pytest.raises(ValueError, match="2 confidences but 1"):
        stats.calibration([0.5, 0.5], [True])


def test_softmax_of_log_likelihoods():
    probabilities = stats.softmax([math.log(0.5), math.log(0.25), math.log(0.25)])
    assert probabilities == pytest.approx([0.5, 0.25, 0.25])
    # Very negative summed log-likelihoods (long cloze options) must not underflow.
    assert stats.softmax([-1000.0, -1001.0]) == pytest.approx([1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))])


def test_by_group_and_confusion():
    groups = stats.by_group(["step1", "step2&3", "step1", "step1"], [True, False, False, True])
    assert list(groups) == ["step1", "step2&3"]
    assert (groups["step1"].correct, groups["step1"].count) == (2, 3)
    assert groups["step1"].low == pytest.approx(stats.wilson_interval(2, 3)[0])
    conf = stats.confusion(["A", "B", "B", "C"], ["A", "A", "B", "A"])
    assert conf.letters == ["A", "B", "C"]
    assert conf.counts["B"] == {"A": 1, "B": 1, "C": 0}
    assert conf.predicted_share() == {"A": 0.75, "B": 0.25, "C": 0.0}  # position bias towards A shows here
    assert conf.gold_share() == {"A": 0.25, "B": 0.5, "C": 0.25}


def test_debiased_moving_average():
    assert stats.ema([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])  # no pull towards zero at the start
    # weight 0.5: 0.5*2 / 0.5 = 2; (0.5*1 + 0.5*0) / 0.75 = 2/3
    assert stats.ema([2.0, 0.0], weight=0.5) == pytest.approx([2.0, 2 / 3])
