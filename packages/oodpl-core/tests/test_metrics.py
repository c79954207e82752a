"""Preference metrics: accuracies with ties, PL and DPORM accuracy, Kendall's tau-b against a
brute-force loop, ranking consistency, bad input."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.metrics import (
    AccuracyResult,
    dporm_accuracy,
    kendall_tau,
    pl_accuracy,
    preference_accuracy,
    ranking_consistency,
)

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)


def t64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def brute_force_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b by looping over every pair (independent of the implementation)."""
    concordant = discordant = tied_x = tied_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0:
            tied_x += 1
        if dy == 0:
            tied_y += 1
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    n0 = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((n0 - tied_x) * (n0 - tied_y))


def test_preference_accuracy_counts_ties_separately() -> None:
    result = preference_accuracy(t64([1.0, 2.0, 3.0, 0.5, 2.0]), t64([0.0, 2.0, 4.0, 0.1, 1.0]))
    assert result == AccuracyResult(accuracy=3 / 5, n_correct=3, n_ties=1, n=5)
    assert result.n_wrong == 1
    assert result.tie_rate == pytest.approx(0.2)
    all_ties = preference_accuracy(t64([1.0, 1.0]), t64([1.0, 1.0]))
    assert (all_ties.accuracy, all_ties.n_ties, all_ties.n_wrong) == (0.0, 2, 0)


@SETTINGS
@given(
    st.integers(min_value=1, max_value=20).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(-3, 3), min_size=n, max_size=n),
            st.lists(st.integers(-3, 3), min_size=n, max_size=n),
        )
    )
)
def test_preference_accuracy_matches_a_loop(pair: tuple[list[int], list[int]]) -> None:
    chosen, rejected = pair
    result = preference_accuracy(t64(chosen), t64(rejected))
    n_correct = sum(1 for c, r in zip(chosen, rejected, strict=True) if c > r)
    n_ties = sum(1 for c, r in zip(chosen, rejected, strict=True) if c == r)
    assert (result.n_correct, result.n_ties, result.n) == (n_correct, n_ties, len(chosen))
    assert result.accuracy == n_correct / len(chosen)
    swapped = preference_accuracy(t64(rejected), t64(chosen))
    assert swapped.n_correct == result.n_wrong
    assert swapped.n_ties == result.n_ties


def test_pl_accuracy_uses_length_normalised_logps() -> None:
    # Summed: chosen −8 > rejected −9 in pair 0; normalised: −8/2 = −4 < −9/3 = −3 -> wrong.
    # Pair 1: −2/1 = −2 > −10/4 = −2.5 -> correct. Pair 2: −3/3 = −1 = −2/2 -> tie.
    result = pl_accuracy(
        t64([-8.0, -2.0, -3.0]),
        torch.tensor([2, 1, 3]),
        t64([-9.0, -10.0, -2.0]),
        torch.tensor([3, 4, 2]),
    )
    assert result == AccuracyResult(accuracy=1 / 3, n_correct=1, n_ties=1, n=3)
    assert result.n_wrong == 1


def test_dporm_accuracy_matches_implicit_reward_comparison() -> None:
    # r_w = β(−10 + 12) = 2β > r_l = β(−8 + 9) = β: correct; pair 2: r_w = 0 < r_l = β: wrong.
    result = dporm_accuracy(
        t64([-10.0, -5.0]), t64([-8.0, -4.0]), t64([-12.0, -5.0]), t64([-9.0, -5.0]), beta=0.03
    )
    assert result == AccuracyResult(accuracy=0.5, n_correct=1, n_ties=0, n=2)
    tied = dporm_accuracy(t64([-1.0]), t64([-2.0]), t64([-1.0]), t64([-2.0]), beta=0.1)
    assert tied.n_ties == 1


def test_metrics_do_not_need_or_keep_gradients() -> None:
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([0.0, 3.0], requires_grad=True)
    assert preference_accuracy(a, b).n_correct == 1
    assert dporm_accuracy(a, b, b, a, beta=1.0).n == 2
    assert pl_accuracy(a, torch.tensor([1, 1]), b, torch.tensor([1, 1])).n_correct == 1


def test_kendall_tau_known_values() -> None:
    x = t64([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau(x, x * 10) == 1.0
    assert kendall_tau(x, -x) == -1.0
    # x = (1,2,3), y = (1,3,2): 2 concordant, 1 discordant -> 1/3.
    assert kendall_tau(t64([1.0, 2.0, 3.0]), t64([1.0, 3.0, 2.0])) == pytest.approx(1 / 3)
    # With a tie in y: x=(1,2,3), y=(1,1,2): n_c=2, n_d=0, n_0=3, ties_y=1 -> 2/sqrt(3·2).
    assert kendall_tau(t64([1.0, 2.0, 3.0]), t64([1.0, 1.0, 2.0])) == pytest.approx(
        2 / math.sqrt(6)
    )
    assert ranking_consistency(x, x) == 1.0
    assert ranking_consistency(x, -x) == 0.0
    assert ranking_consistency(t64([1.0, 2.0, 3.0]), t64([1.0, 3.0, 2.0])) == pytest.approx(2 / 3)


@SETTINGS
@given(
    st.integers(min_value=2, max_value=25).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(-4, 4), min_size=n, max_size=n),
            st.lists(st.integers(-4, 4), min_size=n, max_size=n),
        )
    )
)
def test_kendall_tau_matches_brute_force_with_ties(pair: tuple[list[int], list[int]]) -> None:
    x, y = pair
    if len(set(x)) == 1 or len(set(y)) == 1:
        with pytest.raises(ValueError, match="constant"):
            kendall_tau(t64(x), t64(y))
        return
    expected = brute_force_tau_b(x, y)
    assert kendall_tau(t64(x), t64(y)) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert kendall_tau(t64(y), t64(x)) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert ranking_consistency(t64(x), t64(y)) == pytest.approx((expected + 1) / 2, abs=1e-15)


def test_kendall_tau_chunks_large_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    import oodpl.core.metrics as metrics

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (60,), generator=generator).to(F64)
    y = x + torch.randint(0, 4, (60,), generator=generator).to(F64)
    expected = brute_force_tau_b(x.tolist(), y.tolist())
    monkeypatch.setattr(metrics, "_KENDALL_CHUNK_ELEMENTS", 7 * 60)  # 7 rows per chunk
    assert kendall_tau(x, y) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: preference_accuracy(t64([1.0]), t64([1.0, 2.0])), "rejected_scores"),
        (lambda: preference_accuracy(t64([]), t64([])), "chosen_scores"),
        (lambda: preference_accuracy(t64([math.nan]), t64([1.0])), "chosen_scores"),
        (lambda: preference_accuracy(t64([1.0]), t64([math.inf])), "rejected_scores"),
        (
            lambda: pl_accuracy(t64([-1.0]), torch.tensor([0]), t64([-1.0]), torch.tensor([1])),
            "chosen_n_tokens",
        ),
        (
            lambda: pl_accuracy(t64([-1.0]), torch.tensor([1]), t64([math.nan]), torch.tensor([1])),
            "rejected_logps",
        ),
        (
            lambda: pl_accuracy(
                t64([-1.0]), torch.tensor([1]), t64([-1.0, -2.0]), torch.tensor([1, 1])
            ),
            "rejected_logps",
        ),
        (lambda: dporm_accuracy(t64([0.0]), t64([0.0]), t64([0.0]), t64([0.0]), 0.0), "beta"),
        (
            lambda: dporm_accuracy(t64([0.0]), t64([0.0]), t64([math.nan]), t64([0.0]), 0.1),
            "reference_chosen_logps",
        ),
        (
            lambda: dporm_accuracy(t64([0.0]), t64([0.0, 1.0]), t64([0.0]), t64([0.0]), 0.1),
            "policy_rejected_logps",
        ),
        (lambda: kendall_tau(t64([1.0]), t64([2.0])), "x"),
        (lambda: kendall_tau(t64([1.0, 2.0]), t64([2.0])), "y"),
        (lambda: kendall_tau(t64([1.0, 1.0]), t64([1.0, 2.0])), "x is constant"),
        (lambda: kendall_tau(t64([1.0, 2.0]), t64([3.0, 3.0])), "y is constant"),
        (lambda: kendall_tau(t64([1.0, math.nan]), t64([3.0, 3.0])), "x must be finite"),
        (lambda: ranking_consistency(t64([1.0, 2.0]), t64([math.inf, 3.0])), "y must be finite"),
    ],
)
def test_bad_input_names_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()
