"""Calibration of reward models and reward-difference statistics (METHODS §5, [MORE]).

Pairs in both orientations
--------------------------
A reward model turns a pair into a probability ``p = σ(r_w − r_l)`` that ``y_w`` is preferred. Every
pair is counted in both orientations, ``(p, y = 1)`` and ``(1 − p, y = 0)``, so ``N = 2 × pairs``
(``1 − p`` is computed as ``σ(r_l − r_w)``). All computations run in float64.

Bins
----
``M = n_bins`` bins with edges ``0 = e_0 ≤ e_1 ≤ … ≤ e_M = 1``. Bin ``k`` is the half-open
interval ``(e_k, e_{k+1}]``, except the first bin, which is closed: ``[e_0, e_1]`` (so a
confidence of exactly 0 lands in bin 0 and one equal to an interior edge lands in the lower bin).

- ``"uniform"``: ``e_k = k/M`` (python ``k / M`` rounded to float64).
- ``"quantile"`` (equal mass): ``e_k`` for ``0 < k < M`` is the ``k/M`` quantile of the ``N``
  confidences with linear interpolation between order statistics (numpy's default, "type 7"):
  with sorted values ``s``, ``pos = (k/M)(N − 1)``, ``j = ⌊pos⌋``:
  ``e_k = s[j] + (pos − j)(s[j+1] − s[j])``.
  Bins hold about ``N/M`` items each; ties and values sitting exactly on an edge can make them
  uneven, and duplicate edges give empty bins.

Metrics (over non-empty bins; ``conf_k`` / ``acc_k`` are the mean ``p`` / mean ``y`` in bin ``k``)
- ``ECE = Σ_k |Σ_{i∈k} p_i − Σ_{i∈k} y_i| / N``  (= ``Σ_k (n_k/N)|conf_k − acc_k|``)
- ``ACE = mean_k |conf_k − acc_k|`` over non-empty bins;  ``MCE = max_k |conf_k − acc_k|``
- ``Brier = (1/N) Σ_i (p_i − y_i)²`` (both orientations give the same term, so this equals
  ``mean over pairs of (1 − σ(r_w − r_l))²``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from oodpl.core._validation import (
    check_choice,
    check_positive_int,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "CALIBRATION_BINNINGS",
    "CalibrationBin",
    "CalibrationReport",
    "RewardDifferenceStats",
    "brier_score",
    "calibration_report",
    "expected_calibration_error",
    "pairwise_confidences",
    "reward_difference_stats",
]

#: Binnings accepted by :func:`expected_calibration_error` and :func:`calibration_report`.
CALIBRATION_BINNINGS: tuple[str, ...] = ("uniform", "quantile")

#: Tukey's fence factor: outliers lie beyond ``Q3 + 1.5·IQR`` or below ``Q1 − 1.5·IQR``.
TUKEY_FENCE_FACTOR = 1.5


@dataclass(frozen=True)
class CalibrationBin:
    """One row of a reliability diagram.

    ``lower``/``upper`` are the bin edges (interval ``(lower, upper]``, closed for the first bin);
    ``count`` the number of (confidence, label) items in it; ``mean_confidence`` and ``accuracy``
    the mean ``p`` and mean ``y`` of those items, ``None`` for an empty bin.
    """

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class CalibrationReport:
    """ECE, ACE, MCE and Brier score plus the reliability-diagram table (module docstring).

    ``n`` is the number of (confidence, label) items, i.e. twice the number of pairs.
    """

    ece: float
    ace: float
    mce: float
    brier: float
    bins: list[CalibrationBin]
    n_bins: int
    binning: str
    n: int


@dataclass(frozen=True)
class RewardDifferenceStats:
    """Summary of ``d = r_w − r_l`` with Tukey-fence outliers (METHODS §5).

    Quartiles use linear interpolation (numpy's default). ``std`` is the population standard
    deviation (divisor ``n``). Positive outliers are ``d > upper_fence = Q3 + 1.5·IQR``, negative
    outliers ``d < lower_fence = Q1 − 1.5·IQR``; their means are ``None`` when there are none.
    ``fraction_positive`` is the share of pairs with ``d > 0`` (the pairwise accuracy).
    """

    n: int
    mean: float
    std: float
    minimum: float
    maximum: float
    q1: float
    median: float
    q3: float
    iqr: float
    lower_fence: float
    upper_fence: float
    n_positive_outliers: int
    mean_positive_outlier: float | None
    n_negative_outliers: int
    mean_negative_outlier: float | None
    fraction_positive: float


def _reward_differences(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    check_tensor("chosen_rewards", chosen_rewards)
    check_tensor("rejected_rewards", rejected_rewards)
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    chosen = chosen_rewards.detach().to(torch.float64)
    rejected = rejected_rewards.detach().to(device=chosen.device, dtype=torch.float64)
    return chosen - rejected


def pairwise_confidences(chosen_rewards: Tensor, rejected_rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Both orientations of every pair: confidences ``[σ(d), σ(−d)]`` and labels ``[1…, 0…]``,
    ``d = r_w − r_l``, float64 tensors of length ``2 × pairs`` (METHODS §5)."""
    d = _reward_differences(chosen_rewards, rejected_rewards)
    confidences = torch.cat([torch.sigmoid(d), torch.sigmoid(-d)])
    labels = torch.cat([torch.ones_like(d), torch.zeros_like(d)])
    return confidences, labels


def _linear_quantiles(sorted_values: Tensor, quantiles: list[float]) -> list[float]:
    """Type-7 quantiles (linear interpolation) of an ascending float64 tensor."""
    n = sorted_values.numel()
    positions = [q * (n - 1) for q in quantiles]
    lows = [math.floor(position) for position in positions]
    highs = [min(low + 1, n - 1) for low in lows]
    index = torch.tensor(lows + highs, dtype=torch.long, device=sorted_values.device)
    picked = sorted_values[index].tolist()
    result = []
    for i, position in enumerate(positions):
        low_value, high_value = picked[i], picked[len(lows) + i]
        value = low_value + (position - lows[i]) * (high_value - low_value)
        result.append(min(max(value, low_value), high_value))
    return result


def _bin_edges(confidences: Tensor, n_bins: int, binning: str) -> list[float]:
    if binning == "uniform":
        return [k / n_bins for k in range(n_bins + 1)]
    inner = _linear_quantiles(
        torch.sort(confidences).values, [k / n_bins for k in range(1, n_bins)]
    )
    return [0.0, *inner, 1.0]


def calibration_report(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    n_bins: int = 10,
    binning: str = "uniform",
) -> CalibrationReport:
    """Calibration of a reward model's pairwise probabilities ``σ(r_w − r_l)`` (METHODS §5).

    See the module docstring for the orientations, the bin convention and the formulas. [MORE]
    reports ``n_bins`` ∈ {5, 10, 20}, default 10.

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite rewards,
        ``n_bins < 1`` or an unknown ``binning`` (TypeError for a non-int ``n_bins``).
    """
    check_positive_int("n_bins", n_bins)
    check_choice("binning", binning, CALIBRATION_BINNINGS)
    confidences, labels = pairwise_confidences(chosen_rewards, rejected_rewards)
    n = confidences.numel()
    edges = _bin_edges(confidences, n_bins, binning)
    inner_edges = torch.tensor(edges[1:-1], dtype=torch.float64, device=confidences.device)
    index = torch.bucketize(confidences, inner_edges, right=False)  # e_{k} < p <= e_{k+1}
    counts = torch.bincount(index, minlength=n_bins)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64, device=confidences.device)
    sum_conf.index_add_(0, index, confidences)
    sum_label = torch.zeros_like(sum_conf).index_add_(0, index, labels)

    bins: list[CalibrationBin] = []
    gaps: list[float] = []
    for k, (count, total_conf, total_label) in enumerate(
        zip(counts.tolist(), sum_conf.tolist(), sum_label.tolist(), strict=True)
    ):
        if count == 0:
            bins.append(CalibrationBin(edges[k], edges[k + 1], 0, None, None))
            continue
        mean_conf, accuracy = total_conf / count, total_label / count
        bins.append(CalibrationBin(edges[k], edges[k + 1], count, mean_conf, accuracy))
        gaps.append(abs(mean_conf - accuracy))
    ece = float((sum_conf - sum_label).abs().sum()) / n
    brier = float(((confidences - labels) ** 2).mean())
    return CalibrationReport(
        ece=ece,
        ace=sum(gaps) / len(gaps),
        mce=max(gaps),
        brier=brier,
        bins=bins,
        n_bins=n_bins,
        binning=binning,
        n=n,
    )


def expected_calibration_error(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    n_bins: int = 10,
    binning: str = "uniform",
) -> float:
    """``ECE = Σ_bins |Σ p − Σ y| / N`` over both orientations of every pair (METHODS §5).

    Shortcut for ``calibration_report(...).ece``; raises as :func:`calibration_report`.
    """
    return calibration_report(chosen_rewards, rejected_rewards, n_bins, binning).ece


def brier_score(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Brier score ``mean over pairs of (1 − σ(r_w − r_l))²`` (= the two-orientation mean)."""
    d = _reward_differences(chosen_rewards, rejected_rewards)
    return float((torch.sigmoid(-d) ** 2).mean())


def reward_difference_stats(
    chosen_rewards: Tensor, rejected_rewards: Tensor
) -> RewardDifferenceStats:
    """Statistics of ``d = r_w − r_l`` with Tukey-fence outliers (METHODS §5, [MORE]).

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite rewards.
    """
    d = _reward_differences(chosen_rewards, rejected_rewards)
    q1, median, q3 = _linear_quantiles(torch.sort(d).values, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    lower_fence = q1 - TUKEY_FENCE_FACTOR * iqr
    upper_fence = q3 + TUKEY_FENCE_FACTOR * iqr
    positive = d[d > upper_fence]
    negative = d[d < lower_fence]
    return RewardDifferenceStats(
        n=d.numel(),
        mean=float(d.mean()),
        std=float(d.std(correction=0)),
        minimum=float(d.min()),
        maximum=float(d.max()),
        q1=q1,
        median=median,
        q3=q3,
        iqr=iqr,
        lower_fence=lower_fence,
        upper_fence=upper_fence,
        n_positive_outliers=positive.numel(),
        mean_positive_outlier=float(positive.mean()) if positive.numel() else None,
        n_negative_outliers=negative.numel(),
        mean_negative_outlier=float(negative.mean()) if negative.numel() else None,
        fraction_positive=float((d > 0).to(torch.float64).mean()),
    )
