"""Calibration (METHODS §5): ECE/ACE/MCE/Brier and the bin table against a brute-force pure-Python
implementation written independently here; reward-difference statistics; bad input."""

from __future__ import annotations

import math

import pytest
import torch

from oodpl.core.calibration import (
    CALIBRATION_BINNINGS,
    CalibrationBin,
    brier_score,
    calibration_report,
    expected_calibration_error,
    pairwise_confidences,
    reward_difference_stats,
)

F64 = torch.float64


def t64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------- brute force (pure python)


def py_quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation ("type 7") quantile of an ascending list."""
    position = q * (len(sorted_values) - 1)
    low = int(position)  # position >= 0
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (position - low) * (sorted_values[high] - sorted_values[low])


def brute_force_calibration(chosen: list[float], rejected: list[float], m: int, binning: str):
    items: list[tuple[float, int]] = []
    for w, l in zip(chosen, rejected, strict=True):
        d = w - l
        items.append((1.0 / (1.0 + math.exp(-d)), 1))
        items.append((1.0 / (1.0 + math.exp(d)), 0))
    if binning == "uniform":
        edges = [k / m for k in range(m + 1)]
    else:
        ordered = sorted(p for p, _ in items)
        edges = [0.0] + [py_quantile(ordered, k / m) for k in range(1, m)] + [1.0]
    members: list[list[tuple[float, int]]] = [[] for _ in range(m)]
    for p, y in items:
        for k in range(m):
            low, high = edges[k], edges[k + 1]
            inside = (low <= p <= high) if k == 0 else (low < p <= high)
            if inside:
                members[k].append((p, y))
                break
        else:
            raise AssertionError(f"confidence {p} fell in no bin")
    n = len(items)
    ece = 0.0
    gaps = []
    table = []
    for k, bucket in enumerate(members):
        sum_p = sum(p for p, _ in bucket)
        sum_y = sum(y for _, y in bucket)
        ece += abs(sum_p - sum_y)
        if bucket:
            conf, acc = sum_p / len(bucket), sum_y / len(bucket)
            gaps.append(abs(conf - acc))
            table.append((edges[k], edges[k + 1], len(bucket), conf, acc))
        else:
            table.append((edges[k], edges[k + 1], 0, None, None))
    brier = sum((p - y) ** 2 for p, y in items) / n
    return {
        "ece": ece / n,
        "ace": sum(gaps) / len(gaps),
        "mce": max(gaps),
        "brier": brier,
        "table": table,
    }


def random_rewards(seed: int, n: int, kind: str) -> tuple[list[float], list[float]]:
    generator = torch.Generator().manual_seed(seed)
    if kind == "integer":  # many exactly tied differences (and p = 0.5 items)
        chosen = torch.randint(-3, 4, (n,), generator=generator).to(F64)
        rejected = torch.randint(-3, 4, (n,), generator=generator).to(F64)
    else:
        chosen = torch.randn(n, generator=generator, dtype=F64) * 2 + 0.5
        rejected = torch.randn(n, generator=generator, dtype=F64) * 2
    return chosen.tolist(), rejected.tolist()


CASES = [(seed, n, "normal") for seed, n in ((0, 1), (1, 7), (2, 53), (3, 400))] + [
    (4, 60, "integer"),
    (5, 9, "integer"),
]


@pytest.mark.parametrize("binning", CALIBRATION_BINNINGS)
@pytest.mark.parametrize("n_bins", [5, 10, 20])
@pytest.mark.parametrize(("seed", "n", "kind"), CASES)
def test_matches_brute_force(binning: str, n_bins: int, seed: int, n: int, kind: str) -> None:
    chosen, rejected = random_rewards(seed, n, kind)
    expected = brute_force_calibration(chosen, rejected, n_bins, binning)
    report = calibration_report(t64(chosen), t64(rejected), n_bins=n_bins, binning=binning)
    ece = expected_calibration_error(t64(chosen), t64(rejected), n_bins=n_bins, binning=binning)
    assert ece == pytest.approx(expected["ece"], rel=1e-10, abs=1e-13)
    assert report.ece == ece
    assert report.ace == pytest.approx(expected["ace"], rel=1e-10, abs=1e-13)
    assert report.mce == pytest.approx(expected["mce"], rel=1e-10, abs=1e-13)
    assert report.brier == pytest.approx(expected["brier"], rel=1e-10)
    assert brier_score(t64(chosen), t64(rejected)) == pytest.approx(expected["brier"], rel=1e-10)
    assert (report.n_bins, report.binning, report.n) == (n_bins, binning, 2 * n)
    assert len(report.bins) == n_bins
    for got, (low, high, count, conf, acc) in zip(report.bins, expected["table"], strict=True):
        assert got.lower == pytest.approx(low, rel=1e-12, abs=1e-15)
        assert got.upper == pytest.approx(high, rel=1e-12, abs=1e-15)
        assert got.count == count
        if count == 0:
            assert got.mean_confidence is None and got.accuracy is None
        else:
            assert got.mean_confidence == pytest.approx(conf, rel=1e-10)
            assert got.accuracy == pytest.approx(acc, rel=1e-12)
    assert sum(b.count for b in report.bins) == 2 * n


def test_hand_example() -> None:
    # d = log 3: items (0.75, y=1) and (0.25, y=0) -> ECE = (0.25 + 0.25)/2, Brier = 1/16.
    report = calibration_report(t64([math.log(3.0)]), t64([0.0]), n_bins=10)
    assert report.ece == pytest.approx(0.25, rel=1e-12)
    assert report.ace == pytest.approx(0.25, rel=1e-12)
    assert report.mce == pytest.approx(0.25, rel=1e-12)
    assert report.brier == pytest.approx(1 / 16, rel=1e-12)
    non_empty = [b for b in report.bins if b.count]
    assert non_empty == [
        CalibrationBin(0.2, 0.3, 1, pytest.approx(0.25), 0.0),
        CalibrationBin(0.7, 0.8, 1, pytest.approx(0.75), 1.0),
    ]
    # Equal rewards: both items at p = 0.5, in the bin (0.4, 0.5]; perfectly calibrated.
    tied = calibration_report(t64([1.0]), t64([1.0]), n_bins=10)
    assert tied.ece == 0.0
    assert [b.count for b in tied.bins] == [0, 0, 0, 0, 2, 0, 0, 0, 0, 0]


def test_edge_convention_lower_bin_takes_the_edge() -> None:
    # σ(0) = 0.5 is an interior edge for M = 2: it belongs to the first bin [0, 0.5].
    report = calibration_report(t64([0.0, 3.0]), t64([0.0, 0.0]), n_bins=2)
    assert [b.count for b in report.bins] == [3, 1]
    # Extreme differences give confidences of exactly 0 and 1: first and last bins.
    extreme = calibration_report(t64([1000.0]), t64([0.0]), n_bins=4)
    assert [b.count for b in extreme.bins] == [1, 0, 0, 1]
    assert extreme.ece == 0.0


def test_quantile_bins_hold_equal_mass() -> None:
    chosen, rejected = random_rewards(7, 500, "normal")
    report = calibration_report(t64(chosen), t64(rejected), n_bins=10, binning="quantile")
    assert {b.count for b in report.bins} <= {99, 100, 101}
    assert report.bins[0].lower == 0.0 and report.bins[-1].upper == 1.0
    assert report.bins[4].upper == pytest.approx(0.5)  # both orientations: symmetric around 0.5


def test_calibrated_vs_overconfident_rewards() -> None:
    """Labels drawn from σ(d) give small ECE; the same rewards scaled by 5 are overconfident."""
    generator = torch.Generator().manual_seed(11)
    scores_a = torch.randn(4000, generator=generator, dtype=F64)
    scores_b = torch.randn(4000, generator=generator, dtype=F64)
    a_preferred = torch.rand(4000, generator=generator, dtype=F64) < torch.sigmoid(
        scores_a - scores_b
    )
    chosen = torch.where(a_preferred, scores_a, scores_b)
    rejected = torch.where(a_preferred, scores_b, scores_a)
    for binning in CALIBRATION_BINNINGS:
        assert expected_calibration_error(chosen, rejected, binning=binning) < 0.03
        assert expected_calibration_error(5 * chosen, 5 * rejected, binning=binning) > 0.15


def test_invariant_to_a_common_reward_shift_and_dtype() -> None:
    chosen, rejected = random_rewards(3, 100, "normal")
    base = calibration_report(t64(chosen), t64(rejected))
    shifted = calibration_report(t64(chosen) + 7.0, t64(rejected) + 7.0)
    assert shifted.ece == pytest.approx(base.ece, abs=1e-12)
    single = calibration_report(torch.tensor(chosen), torch.tensor(rejected))  # float32 input
    assert single.ece == pytest.approx(base.ece, abs=1e-6)


def test_pairwise_confidences() -> None:
    confidences, labels = pairwise_confidences(t64([2.0, 0.0]), t64([0.0, 1.0]))
    sig = [
        1 / (1 + math.exp(-2)),
        1 / (1 + math.exp(1)),
        1 / (1 + math.exp(2)),
        1 / (1 + math.exp(-1)),
    ]
    assert confidences.tolist() == pytest.approx(sig, rel=1e-14)
    assert labels.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert confidences.dtype == F64


# ---------------------------------------------------------------- reward-difference statistics


def test_reward_difference_stats_hand_example() -> None:
    # d = (1, 2, 3, 4, 100, −50); sorted (−50, 1, 2, 3, 4, 100): Q1 = 1.25, median 2.5, Q3 = 3.75,
    # IQR 2.5, fences −2.5 and 7.5 -> one positive outlier (100), one negative (−50).
    stats = reward_difference_stats(t64([1.0, 2.0, 3.0, 4.0, 100.0, -50.0]), t64([0.0] * 6))
    assert (stats.q1, stats.median, stats.q3, stats.iqr) == pytest.approx((1.25, 2.5, 3.75, 2.5))
    assert (stats.lower_fence, stats.upper_fence) == pytest.approx((-2.5, 7.5))
    assert (stats.n_positive_outliers, stats.mean_positive_outlier) == (1, 100.0)
    assert (stats.n_negative_outliers, stats.mean_negative_outlier) == (1, -50.0)
    assert stats.n == 6
    assert stats.mean == pytest.approx(60 / 6)
    assert (stats.minimum, stats.maximum) == (-50.0, 100.0)
    assert stats.fraction_positive == pytest.approx(5 / 6)


def test_reward_difference_stats_without_outliers() -> None:
    stats = reward_difference_stats(t64([1.0, 2.0, 3.0]), t64([0.0, 0.0, 0.0]))
    assert stats.n_positive_outliers == stats.n_negative_outliers == 0
    assert stats.mean_positive_outlier is None and stats.mean_negative_outlier is None
    assert stats.std == pytest.approx(math.sqrt(2 / 3))
    single = reward_difference_stats(t64([1.0]), t64([3.0]))
    assert (single.q1, single.median, single.q3, single.iqr, single.std) == (
        -2.0,
        -2.0,
        -2.0,
        0.0,
        0.0,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_difference_stats_match_brute_force(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    # Heavy tails (Student-t like) so that both kinds of outliers occur.
    d = (
        torch.randn(301, generator=generator, dtype=F64)
        / torch.rand(301, generator=generator, dtype=F64).sqrt()
    ).tolist()
    rejected = torch.randn(301, generator=generator, dtype=F64).tolist()
    chosen = [x + r for x, r in zip(d, rejected, strict=True)]
    diffs = [c - r for c, r in zip(chosen, rejected, strict=True)]
    ordered = sorted(diffs)
    q1, q3 = py_quantile(ordered, 0.25), py_quantile(ordered, 0.75)
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    positive = [x for x in diffs if x > high]
    negative = [x for x in diffs if x < low]
    stats = reward_difference_stats(t64(chosen), t64(rejected))
    assert stats.q1 == pytest.approx(q1, rel=1e-12)
    assert stats.q3 == pytest.approx(q3, rel=1e-12)
    assert stats.median == pytest.approx(py_quantile(ordered, 0.5), rel=1e-12)
    assert stats.n_positive_outliers == len(positive) > 0
    assert stats.n_negative_outliers == len(negative) > 0
    assert stats.mean_positive_outlier == pytest.approx(sum(positive) / len(positive), rel=1e-12)
    assert stats.mean_negative_outlier == pytest.approx(sum(negative) / len(negative), rel=1e-12)
    mean = sum(diffs) / len(diffs)
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.std == pytest.approx(
        math.sqrt(sum((x - mean) ** 2 for x in diffs) / len(diffs)), rel=1e-10
    )


# ---------------------------------------------------------------- bad input

GOOD = (t64([1.0, 2.0]), t64([0.0, 3.0]))


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: calibration_report(*GOOD, n_bins=0), ValueError, "n_bins"),
        (lambda: calibration_report(*GOOD, n_bins=-3), ValueError, "n_bins"),
        (lambda: calibration_report(*GOOD, n_bins=2.5), TypeError, "n_bins"),
        (lambda: expected_calibration_error(*GOOD, n_bins=True), TypeError, "n_bins"),
        (lambda: expected_calibration_error(*GOOD, binning="equal"), ValueError, "binning"),
        (lambda: calibration_report(t64([]), t64([])), ValueError, "chosen_rewards"),
        (lambda: calibration_report(t64([1.0]), t64([1.0, 2.0])), ValueError, "rejected_rewards"),
        (
            lambda: expected_calibration_error(t64([math.nan]), t64([0.0])),
            ValueError,
            "chosen_rewards",
        ),
        (
            lambda: expected_calibration_error(t64([0.0]), t64([math.inf])),
            ValueError,
            "rejected_rewards",
        ),
        (lambda: brier_score(t64([0.0]), t64([-math.inf])), ValueError, "rejected_rewards"),
        (lambda: pairwise_confidences(t64([0.0]), [0.0]), TypeError, "rejected_rewards"),
        (
            lambda: reward_difference_stats(t64([math.nan]), t64([0.0])),
            ValueError,
            "chosen_rewards",
        ),
        (lambda: reward_difference_stats(t64([]), t64([])), ValueError, "chosen_rewards"),
        (
            lambda: reward_difference_stats(t64([1.0, 2.0]), t64([1.0])),
            ValueError,
            "rejected_rewards",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        call()
