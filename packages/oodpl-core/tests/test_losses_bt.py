"""Bradley–Terry loss (METHODS §1) against hand-derived values, closed-form gradients and
properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.losses import bradley_terry_loss

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)
finite_floats = st.floats(min_value=-30.0, max_value=30.0, allow_nan=False)
batches = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.tuples(
        st.lists(finite_floats, min_size=n, max_size=n),
        st.lists(finite_floats, min_size=n, max_size=n),
    )
)


def t64(values: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def softplus(x: float) -> float:
    """log(1 + e^x) in float64 via the math module, written independently of torch."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_hand_values() -> None:
    # r_w − r_l = (1, −1): ℓ = (log(1+e^{−1}), log(1+e^{1})).
    loss = bradley_terry_loss(t64([1.0, -0.5]), t64([0.0, 0.5]))
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(0.8133, abs=1e-4)
    # margin 0.5: ℓ = (log(1+e^{−0.5}), log(1+e^{1.5})).
    per_pair = bradley_terry_loss(t64([1.0, -0.5]), t64([0.0, 0.5]), 0.5, reduction="none")
    assert per_pair.tolist() == pytest.approx(
        [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(1.5))], rel=1e-14
    )
    # Equal rewards, no margin: log 2.
    assert bradley_terry_loss(t64([3.0]), t64([3.0])).item() == pytest.approx(math.log(2))


def test_reductions_and_per_pair_margin() -> None:
    chosen, rejected = t64([2.0, 0.0, -1.0]), t64([1.0, 1.0, 1.0])
    margin = t64([0.0, 1.0, -2.0])
    per_pair = bradley_terry_loss(chosen, rejected, margin, reduction="none")
    expected = [
        softplus(-(c - r - m)) for c, r, m in zip([2, 0, -1], [1, 1, 1], [0, 1, -2], strict=True)
    ]
    assert per_pair.tolist() == pytest.approx(expected, rel=1e-14)
    total = bradley_terry_loss(chosen, rejected, margin, reduction="sum").item()
    assert total == pytest.approx(sum(expected), rel=1e-14)
    mean = bradley_terry_loss(chosen, rejected, margin).item()
    assert mean == pytest.approx(sum(expected) / 3, rel=1e-14)


def test_stable_for_large_reward_gaps() -> None:
    loss = bradley_terry_loss(t64([1000.0, -1000.0]), t64([0.0, 0.0]), reduction="none")
    assert loss[0].item() == 0.0
    assert loss[1].item() == pytest.approx(1000.0, rel=1e-15)
    loss32 = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert loss32.item() == pytest.approx(200.0, rel=1e-6)


@SETTINGS
@given(batches, st.floats(min_value=-3.0, max_value=3.0))
def test_gradients_match_closed_form(pair: tuple[list[float], list[float]], m: float) -> None:
    chosen, rejected = t64(pair[0], grad=True), t64(pair[1], grad=True)
    bradley_terry_loss(chosen, rejected, m).backward()
    b = len(pair[0])
    # d/dr_w of −mean log σ(Δ − m) = −σ(−(Δ − m))/B ; d/dr_l = +σ(−(Δ − m))/B.
    expected = [-sigmoid(-(w - l - m)) / b for w, l in zip(*pair, strict=True)]
    assert chosen.grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert rejected.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-12, abs=1e-300)


@SETTINGS
@given(batches, st.floats(min_value=-3.0, max_value=3.0))
def test_matches_independent_formula(pair: tuple[list[float], list[float]], m: float) -> None:
    loss = bradley_terry_loss(t64(pair[0]), t64(pair[1]), m, reduction="none")
    expected = [softplus(-(w - l - m)) for w, l in zip(*pair, strict=True)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-300)


@SETTINGS
@given(batches, st.floats(min_value=-3.0, max_value=3.0))
def test_swap_symmetry(pair: tuple[list[float], list[float]], m: float) -> None:
    a, b = t64(pair[0]), t64(pair[1])
    forward = bradley_terry_loss(a, b, m, reduction="none")
    swapped = bradley_terry_loss(b, a, -m, reduction="none")
    # ℓ(a, b, m) = −logσ(x) and ℓ(b, a, −m) = −logσ(−x) with x = a − b − m:
    assert torch.allclose(swapped, -F.logsigmoid(-(a - b - m)), rtol=1e-12, atol=0)
    # and logσ(x) − logσ(−x) = x, so ℓ(a,b,m) − ℓ(b,a,−m) = −x.
    assert torch.allclose(forward - swapped, -(a - b - m), rtol=1e-9, atol=1e-9)
    assert bool((forward >= 0).all())


@SETTINGS
@given(batches, st.floats(min_value=-50.0, max_value=50.0))
def test_invariant_to_common_shift(pair: tuple[list[float], list[float]], c: float) -> None:
    a, b = t64(pair[0]), t64(pair[1])
    shifted = bradley_terry_loss(a + c, b + c, reduction="none")
    assert torch.allclose(shifted, bradley_terry_loss(a, b, reduction="none"), atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"chosen_rewards": torch.zeros(3, dtype=F64)}, "chosen_rewards"),
        ({"chosen_rewards": torch.tensor([], dtype=F64)}, "chosen_rewards"),
        ({"rejected_rewards": torch.tensor([], dtype=F64)}, "rejected_rewards"),
        ({"chosen_rewards": torch.tensor([math.nan, 0.0], dtype=F64)}, "chosen_rewards"),
        ({"rejected_rewards": torch.tensor([0.0, math.inf], dtype=F64)}, "rejected_rewards"),
        ({"margin": math.nan}, "margin"),
        ({"margin": torch.zeros(3, dtype=F64)}, "margin"),
        ({"margin": torch.tensor([0.0, math.inf], dtype=F64)}, "margin"),
        ({"reduction": "median"}, "reduction"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, name: str) -> None:
    args = {
        "chosen_rewards": torch.zeros(2, dtype=F64),
        "rejected_rewards": torch.zeros(2, dtype=F64),
        **kwargs,
    }
    with pytest.raises(ValueError, match=name):
        bradley_terry_loss(**args)


def test_non_tensor_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="chosen_rewards"):
        bradley_terry_loss([1.0], torch.zeros(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="margin"):
        bradley_terry_loss(torch.zeros(1), torch.zeros(1), "1")  # type: ignore[arg-type]
