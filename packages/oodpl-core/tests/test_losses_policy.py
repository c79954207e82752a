"""Policy losses: OODPL outer loss ([OODPL] Eq. 6–7), reward-weighted regression ([OODPL] Eq. 10)
and SFT — hand values, closed-form gradients, properties, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.losses import (
    RWR_WEIGHTINGS,
    bradley_terry_loss,
    length_normalized_logps,
    policy_preference_loss,
    reward_weighted_regression_loss,
    reward_weights,
    sft_loss,
)

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)
logp = st.floats(min_value=-80.0, max_value=-0.01, allow_nan=False)
reward = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)
length = st.integers(min_value=1, max_value=50)


@st.composite
def sequences(draw: st.DrawFn, n_columns: int = 1) -> tuple[list[list[float]], list[list[int]]]:
    """``n_columns`` (log-prob list, length list) pairs of one shared batch size."""
    n = draw(st.integers(min_value=1, max_value=6))
    logps = [draw(st.lists(logp, min_size=n, max_size=n)) for _ in range(n_columns)]
    lengths = [draw(st.lists(length, min_size=n, max_size=n)) for _ in range(n_columns)]
    return logps, lengths


def t64(values: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# ---------------------------------------------------------------- policy_preference_loss


def test_policy_preference_hand_values() -> None:
    # ℓ̄_w = −6/3 = −2, ℓ̄_l = −10/4 = −2.5 → Δ = 0.5 → log(1 + e^{−0.5}).
    loss = policy_preference_loss(t64([-6.0]), torch.tensor([3]), t64([-10.0]), torch.tensor([4]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), rel=1e-14)
    # The summed log-probs alone would prefer the chosen one by 4 nats; length-normalised they tie.
    tie = policy_preference_loss(t64([-2.0]), torch.tensor([1]), t64([-6.0]), torch.tensor([3]))
    assert tie.item() == pytest.approx(math.log(2), rel=1e-14)


@SETTINGS
@given(sequences(n_columns=2))
def test_policy_preference_value_and_gradient(batch) -> None:
    (lw, ll), (nw, nl) = batch
    chosen, rejected = t64(lw, grad=True), t64(ll, grad=True)
    loss = policy_preference_loss(chosen, torch.tensor(nw), rejected, torch.tensor(nl))
    loss.backward()
    b = len(lw)
    deltas = [w / a - r / c for w, a, r, c in zip(lw, nw, ll, nl, strict=True)]
    assert loss.item() == pytest.approx(sum(softplus(-d) for d in deltas) / b, rel=1e-12)
    # ∂L/∂logπ_w = −σ(−Δ)/(|y_w| B), ∂L/∂logπ_l = +σ(−Δ)/(|y_l| B).
    grad_w = [-sigmoid(-d) / (n * b) for d, n in zip(deltas, nw, strict=True)]
    grad_l = [sigmoid(-d) / (n * b) for d, n in zip(deltas, nl, strict=True)]
    assert chosen.grad.tolist() == pytest.approx(grad_w, rel=1e-10)
    assert rejected.grad.tolist() == pytest.approx(grad_l, rel=1e-10)


@SETTINGS
@given(sequences(n_columns=2), st.floats(min_value=-5.0, max_value=5.0))
def test_policy_preference_invariant_to_a_per_token_constant(batch, c: float) -> None:
    (lw, ll), (nw, nl) = batch
    n_w, n_l = torch.tensor(nw), torch.tensor(nl)
    base = policy_preference_loss(t64(lw), n_w, t64(ll), n_l, reduction="none")
    shifted = policy_preference_loss(
        t64(lw) + c * n_w.to(F64), n_w, t64(ll) + c * n_l.to(F64), n_l, reduction="none"
    )
    assert torch.allclose(base, shifted, rtol=1e-9, atol=1e-12)
    # It is the Bradley–Terry loss of the length-normalised log-probs.
    bt = bradley_terry_loss(t64(lw) / n_w, t64(ll) / n_l, reduction="none")
    assert torch.allclose(base, bt, rtol=1e-14, atol=0)


def test_policy_preference_float_token_counts_and_reductions() -> None:
    lw, ll = t64([-4.0, -9.0]), t64([-3.0, -3.0])
    nw, nl = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0])
    none = policy_preference_loss(lw, nw, ll, nl, reduction="none")
    expected = [softplus(-(-2.0 + 3.0)), softplus(-(-3.0 + 1.5))]
    assert none.tolist() == pytest.approx(expected, rel=1e-14)
    assert policy_preference_loss(lw, nw, ll, nl, reduction="sum").item() == pytest.approx(
        sum(expected), rel=1e-14
    )


# ---------------------------------------------------------------- reward_weighted_regression


def test_rwr_hand_values() -> None:
    logps, n_tokens = t64([-2.0, -6.0]), torch.tensor([1, 2])  # ℓ̄ = (−2, −3)
    rewards = t64([math.log(3.0), 0.0])
    # softmax, β = 1: softmax(log 3, 0) = (3/4, 1/4), w = (1.5, 0.5), L = −(1.5·−2 + 0.5·−3)/2.
    softmax = reward_weighted_regression_loss(logps, n_tokens, rewards, beta=1.0)
    assert softmax.item() == pytest.approx(2.25, rel=1e-14)
    # clipped_exp, β = 1, max_weight 2: w = (min(3, 2), 1) = (2, 1), L = −(2·−2 + 1·−3)/2 = 3.5.
    clipped = reward_weighted_regression_loss(
        logps, n_tokens, rewards, beta=1.0, weighting="clipped_exp", max_weight=2.0
    )
    assert clipped.item() == pytest.approx(3.5, rel=1e-14)
    # β = 0.5 doubles r/β: w = (min(9, 20), 1) = (9, 1), L = −(9·−2 + 1·−3)/2 = 10.5.
    clipped = reward_weighted_regression_loss(
        logps, n_tokens, rewards, beta=0.5, weighting="clipped_exp"
    )
    assert clipped.item() == pytest.approx(10.5, rel=1e-14)


@SETTINGS
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.lists(reward, min_size=n, max_size=n)
    ),
    st.floats(min_value=0.05, max_value=10.0),
    st.floats(min_value=-100.0, max_value=100.0),
)
def test_softmax_weights_sum_to_batch_size_and_ignore_shifts(
    rewards: list[float], beta: float, shift: float
) -> None:
    weights = reward_weights(t64(rewards), beta=beta)
    assert weights.sum().item() == pytest.approx(len(rewards), rel=1e-12)
    assert bool((weights > 0).all())
    shifted = reward_weights(t64(rewards) + shift, beta=beta)
    assert torch.allclose(weights, shifted, rtol=1e-9, atol=1e-12)
    # Independent formula: w_b = B·exp(r_b/β) / Σ_j exp(r_j/β).
    top = max(rewards) / beta
    z = sum(math.exp(r / beta - top) for r in rewards)
    expected = [len(rewards) * math.exp(r / beta - top) / z for r in rewards]
    assert weights.tolist() == pytest.approx(expected, rel=1e-10)


def test_weights_flatten_with_large_beta() -> None:
    rewards = t64([-3.0, 0.0, 4.0])
    spread = [reward_weights(rewards, beta=b).std().item() for b in (0.5, 2.0, 1e6)]
    assert spread[0] > spread[1] > spread[2]
    assert spread[2] < 1e-5
    assert reward_weights(rewards, beta=1e6, weighting="clipped_exp").tolist() == pytest.approx(
        [1.0, 1.0, 1.0], abs=1e-5
    )


def test_clipped_exp_never_overflows() -> None:
    rewards = torch.tensor([1e4, -1e4, 0.0], dtype=torch.float32, requires_grad=True)
    weights = reward_weights(rewards, beta=0.01, weighting="clipped_exp", max_weight=20.0)
    assert weights.tolist() == pytest.approx([20.0, 0.0, 1.0], rel=1e-6)
    weights.sum().backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[0].item() == 0.0  # clipped: no gradient


@pytest.mark.parametrize("weighting", RWR_WEIGHTINGS)
@SETTINGS
@given(
    batch=sequences(),
    rewards_seed=st.integers(min_value=0, max_value=2**31 - 1),
    beta=st.floats(min_value=0.2, max_value=5.0),
    max_weight=st.floats(min_value=0.5, max_value=30.0),
)
def test_rwr_value_and_gradients_match_closed_form(
    weighting: str, batch, rewards_seed: int, beta: float, max_weight: float
) -> None:
    (lp,), (nt,) = batch
    b = len(lp)
    generator = torch.Generator().manual_seed(rewards_seed)
    r_list = (torch.randn(b, generator=generator, dtype=F64) * 3).tolist()
    logps, rewards = t64(lp, grad=True), t64(r_list, grad=True)
    loss = reward_weighted_regression_loss(
        logps, torch.tensor(nt), rewards, beta=beta, weighting=weighting, max_weight=max_weight
    )
    loss.backward()
    lbar = [x / n for x, n in zip(lp, nt, strict=True)]
    if weighting == "softmax":
        top = max(r_list) / beta
        exps = [math.exp(r / beta - top) for r in r_list]
        s = [e / sum(exps) for e in exps]
        w = [b * si for si in s]
        mean_lbar = sum(si * li for si, li in zip(s, lbar, strict=True))
        # ∂L/∂r_j = −(1/β) s_j (ℓ̄_j − Σ_b s_b ℓ̄_b)
        grad_r = [-(si / beta) * (li - mean_lbar) for si, li in zip(s, lbar, strict=True)]
    else:
        raw = [math.exp(r / beta) for r in r_list]
        if any(abs(x - max_weight) < 1e-9 * max_weight for x in raw):
            return  # at the kink of min(·, max_weight)
        w = [min(x, max_weight) for x in raw]
        # ∂L/∂r_j = −w_j ℓ̄_j/(βB) where unclipped, 0 where clipped.
        grad_r = [
            -(x * li) / (beta * b) if x < max_weight else 0.0
            for x, li in zip(raw, lbar, strict=True)
        ]
    expected_loss = -sum(wi * li for wi, li in zip(w, lbar, strict=True)) / b
    assert loss.item() == pytest.approx(expected_loss, rel=1e-10)
    # ∂L/∂logπ_b = −w_b/(B|y_b|)
    grad_logps = [-wi / (b * n) for wi, n in zip(w, nt, strict=True)]
    assert logps.grad.tolist() == pytest.approx(grad_logps, rel=1e-10, abs=1e-300)
    assert rewards.grad.tolist() == pytest.approx(grad_r, rel=1e-8, abs=1e-12)


@SETTINGS
@given(sequences())
def test_rwr_with_equal_weights_is_sequence_sft(batch) -> None:
    (lp,), (nt,) = batch
    logps, n_tokens = t64(lp), torch.tensor(nt)
    sft = sft_loss(logps, n_tokens, normalize="sequence")
    zeros = torch.zeros(len(lp), dtype=F64)
    for weighting in RWR_WEIGHTINGS:
        rwr = reward_weighted_regression_loss(logps, n_tokens, zeros, weighting=weighting)
        assert rwr.item() == pytest.approx(sft.item(), rel=1e-12)


# ---------------------------------------------------------------- sft_loss


def test_sft_hand_values_and_gradients() -> None:
    logps, n_tokens = t64([-4.0, -12.0], grad=True), torch.tensor([2, 6])
    token = sft_loss(logps, n_tokens)  # 16 / 8
    assert token.item() == pytest.approx(2.0, rel=1e-15)
    token.backward()
    assert logps.grad.tolist() == pytest.approx([-1 / 8, -1 / 8], rel=1e-15)
    logps.grad = None
    logps2 = t64([-4.0, -3.0], grad=True)
    sequence = sft_loss(logps2, torch.tensor([2, 6]), normalize="sequence")  # (2 + 0.5)/2
    assert sequence.item() == pytest.approx(1.25, rel=1e-15)
    sequence.backward()
    assert logps2.grad.tolist() == pytest.approx([-1 / 4, -1 / 12], rel=1e-15)
    # Same lengths: the two normalisations agree.
    same = torch.tensor([3, 3])
    assert sft_loss(logps2, same).item() == pytest.approx(
        sft_loss(logps2, same, normalize="sequence").item(), rel=1e-15
    )


def test_length_normalized_logps() -> None:
    out = length_normalized_logps(t64([-6.0, -1.0]), torch.tensor([3, 4]))
    assert out.tolist() == [-2.0, -0.25]


# ---------------------------------------------------------------- bad input


def _counts(*values: int) -> torch.Tensor:
    return torch.tensor(values)


PPL_BAD = [
    ({"chosen_logps": t64([-1.0, -2.0, -3.0])}, "chosen_logps"),
    ({"chosen_logps": t64([math.nan, -2.0])}, "chosen_logps"),
    ({"rejected_logps": t64([-math.inf, -2.0])}, "rejected_logps"),
    ({"rejected_logps": t64([])}, "rejected_logps"),
    ({"chosen_n_tokens": _counts(0, 2)}, "chosen_n_tokens"),
    ({"rejected_n_tokens": _counts(3, -1)}, "rejected_n_tokens"),
    ({"rejected_n_tokens": _counts(3)}, "rejected_n_tokens"),
    ({"rejected_n_tokens": torch.tensor([1.0, math.nan])}, "rejected_n_tokens"),
    ({"reduction": "avg"}, "reduction"),
]


@pytest.mark.parametrize(("override", "name"), PPL_BAD)
def test_policy_preference_bad_input(override: dict, name: str) -> None:
    args = {
        "chosen_logps": t64([-1.0, -2.0]),
        "chosen_n_tokens": _counts(1, 2),
        "rejected_logps": t64([-3.0, -2.0]),
        "rejected_n_tokens": _counts(2, 2),
        **override,
    }
    with pytest.raises(ValueError, match=name):
        policy_preference_loss(**args)


RWR_BAD = [
    ({"logps": t64([-1.0])}, "logps"),
    ({"logps": t64([math.nan, -1.0])}, "logps"),
    ({"n_tokens": _counts(0, 1)}, "n_tokens"),
    ({"rewards": t64([0.0, math.inf])}, "rewards"),
    ({"rewards": t64([0.0, 1.0, 2.0])}, "rewards"),
    ({"rewards": t64([])}, "rewards"),
    ({"beta": 0.0}, "beta"),
    ({"beta": -2.0}, "beta"),
    ({"weighting": "exp"}, "weighting"),
    ({"weighting": "clipped_exp", "max_weight": 0.0}, "max_weight"),
    ({"max_weight": math.inf}, "max_weight"),
]


@pytest.mark.parametrize(("override", "name"), RWR_BAD)
def test_rwr_bad_input(override: dict, name: str) -> None:
    args = {
        "logps": t64([-1.0, -2.0]),
        "n_tokens": _counts(1, 2),
        "rewards": t64([0.5, -0.5]),
        **override,
    }
    logps, n_tokens, rewards = args.pop("logps"), args.pop("n_tokens"), args.pop("rewards")
    with pytest.raises(ValueError, match=name):
        reward_weighted_regression_loss(logps, n_tokens, rewards, **args)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((t64([-1.0]), _counts(0)), "n_tokens"),
        ((t64([-1.0]), _counts(1, 2)), "n_tokens"),
        ((t64([math.nan]), _counts(1)), "logps"),
        ((t64([]), torch.tensor([], dtype=torch.long)), "logps"),
        ((t64([-1.0]), _counts(1), "word"), "normalize"),
    ],
)
def test_sft_bad_input(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        sft_loss(*args)


def test_integer_logps_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="logps"):
        sft_loss(torch.tensor([-3]), _counts(1))
