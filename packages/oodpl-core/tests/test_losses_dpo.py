"""DPO family (METHODS §2): hand values, closed-form gradients for every loss type, limits and
properties, implicit rewards, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.losses import DPO_LOSS_TYPES, DPOOutput, dpo_loss, implicit_reward

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)
logp = st.floats(min_value=-60.0, max_value=-0.01, allow_nan=False)
betas = st.floats(min_value=0.01, max_value=2.0)


@st.composite
def dpo_batches(draw: st.DrawFn) -> tuple[list[list[float]], list[int]]:
    """Four lists of summed log-probs (policy w, policy l, ref w, ref l) and chosen lengths."""
    n = draw(st.integers(min_value=1, max_value=5))
    columns = [draw(st.lists(logp, min_size=n, max_size=n)) for _ in range(4)]
    lengths = draw(st.lists(st.integers(min_value=1, max_value=40), min_size=n, max_size=n))
    return columns, lengths


def tensors(columns: list[list[float]], grad: bool = False) -> list[torch.Tensor]:
    return [torch.tensor(c, dtype=F64, requires_grad=grad) for c in columns]


def log_sigmoid(x: float) -> float:
    """log σ(x) with the math module, independent of torch."""
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def expected_loss(loss_type: str, u: float, beta: float, eps: float) -> float:
    """Per-pair loss of METHODS §2 written out with ``math``."""
    h = beta * u
    if loss_type == "sigmoid":
        return -log_sigmoid(h)
    if loss_type == "label_smoothed":
        return -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h)
    if loss_type == "robust":
        return (-(1 - eps) * log_sigmoid(h) + eps * log_sigmoid(-h)) / (1 - 2 * eps)
    if loss_type == "ipo":
        return (h / beta - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - h)


def expected_dloss_du(loss_type: str, u: float, beta: float, eps: float) -> float:
    """dℓ/du, derived by hand (dℓ/du = β·dℓ/dh)."""
    h = beta * u
    if loss_type == "sigmoid":
        return -beta * sigmoid(-h)
    if loss_type == "label_smoothed":
        return beta * (-(1 - eps) * sigmoid(-h) + eps * sigmoid(h))
    if loss_type == "robust":
        return beta * (-(1 - eps) * sigmoid(-h) - eps * sigmoid(h)) / (1 - 2 * eps)
    if loss_type == "ipo":
        return 2 * (u - 1 / (2 * beta))
    return -beta if h < 1 else 0.0


def eps_for(loss_type: str) -> float:
    return {"label_smoothed": 0.3, "robust": 0.2}.get(loss_type, 0.0)


def test_loss_types_tuple() -> None:
    assert DPO_LOSS_TYPES == ("sigmoid", "label_smoothed", "robust", "ipo", "hinge")


def test_hand_values() -> None:
    # u = (−10 − −12) − (−15 − −14) = 2 − (−1) = 3 ; β = 0.5 → h = 1.5.
    columns = [[-10.0], [-15.0], [-12.0], [-14.0]]
    values = {
        "sigmoid": math.log(1 + math.exp(-1.5)),
        "label_smoothed": 0.7 * math.log(1 + math.exp(-1.5)) + 0.3 * math.log(1 + math.exp(1.5)),
        "robust": (0.8 * math.log(1 + math.exp(-1.5)) - 0.2 * math.log(1 + math.exp(1.5))) / 0.6,
        "ipo": (3.0 - 1.0) ** 2,  # (u − 1/(2β))² = (3 − 1)² = 4
        "hinge": 0.0,  # max(0, 1 − 1.5)
    }
    for loss_type, value in values.items():
        out = dpo_loss(
            *tensors(columns), beta=0.5, loss_type=loss_type, label_smoothing=eps_for(loss_type)
        )
        assert out.loss.item() == pytest.approx(value, rel=1e-14, abs=1e-15), loss_type
    assert values["sigmoid"] == pytest.approx(0.2014133, abs=1e-7)
    # hinge in its active region: β = 0.1 → h = 0.3 → 0.7
    assert dpo_loss(*tensors(columns), beta=0.1, loss_type="hinge").loss.item() == pytest.approx(
        0.7
    )
    # RPO adds α·(−logπ_θ(y_w)/|y_w|) = 0.5 · 10/4 = 1.25 to each pair.
    out = dpo_loss(*tensors(columns), beta=0.5, rpo_alpha=0.5, chosen_n_tokens=torch.tensor([4]))
    assert out.loss.item() == pytest.approx(values["sigmoid"] + 1.25, rel=1e-14)


def test_output_fields_and_reductions() -> None:
    columns = [[-3.0, -8.0, -1.0], [-4.0, -2.0, -1.0], [-3.5, -7.0, -2.0], [-3.9, -2.5, -0.5]]
    pw, pl, rw, rl = tensors(columns, grad=True)
    out = dpo_loss(pw, pl, rw, rl, beta=0.2, reduction="none")
    assert isinstance(out, DPOOutput)
    assert torch.equal(out.loss, out.losses)
    assert out.losses.requires_grad
    for field in (out.chosen_rewards, out.rejected_rewards, out.margins):
        assert not field.requires_grad
        assert field.shape == (3,)
    assert torch.equal(out.chosen_rewards, implicit_reward(pw, rw, 0.2).detach())
    assert torch.equal(out.rejected_rewards, implicit_reward(pl, rl, 0.2).detach())
    assert torch.equal(out.margins, out.chosen_rewards - out.rejected_rewards)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, -0.2, 0.2], rel=1e-12)
    total = dpo_loss(pw, pl, rw, rl, beta=0.2, reduction="sum").loss
    mean = dpo_loss(pw, pl, rw, rl, beta=0.2).loss
    assert total.item() == pytest.approx(out.losses.sum().item(), rel=1e-14)
    assert mean.item() == pytest.approx(out.losses.mean().item(), rel=1e-14)


def test_implicit_reward_is_beta_times_summed_logratio() -> None:
    policy = torch.tensor([-12.0, -30.0], dtype=F64, requires_grad=True)
    reference = torch.tensor([-14.0, -25.0], dtype=F64)
    reward = implicit_reward(policy, reference, 0.03)
    assert reward.tolist() == pytest.approx([0.06, -0.15], rel=1e-12)
    reward.sum().backward()
    assert policy.grad.tolist() == pytest.approx([0.03, 0.03])


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
@SETTINGS
@given(batch=dpo_batches(), beta=betas)
def test_values_and_gradients_match_closed_form(
    loss_type: str, batch: tuple[list[list[float]], list[int]], beta: float
) -> None:
    columns, lengths = batch
    eps = eps_for(loss_type)
    alpha = 0.7
    pw, pl, rw, rl = tensors(columns, grad=True)
    n_tokens = torch.tensor(lengths)
    out = dpo_loss(
        pw,
        pl,
        rw,
        rl,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=eps,
        rpo_alpha=alpha,
        chosen_n_tokens=n_tokens,
    )
    out.loss.backward()
    b = len(lengths)
    us = [(a - c) - (bb - d) for a, bb, c, d in zip(*columns, strict=True)]
    if loss_type == "hinge" and any(abs(beta * u - 1) < 1e-9 for u in us):
        return  # kink of max(0, 1 − h): the derivative is not defined there
    nll = [-w / n for w, n in zip(columns[0], lengths, strict=True)]
    expected = [
        expected_loss(loss_type, u, beta, eps) + alpha * v for u, v in zip(us, nll, strict=True)
    ]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    g = [expected_dloss_du(loss_type, u, beta, eps) / b for u in us]
    rpo = [-alpha / (n * b) for n in lengths]
    assert pw.grad.tolist() == pytest.approx(
        [x + y for x, y in zip(g, rpo, strict=True)], rel=1e-10, abs=1e-14
    )
    assert pl.grad.tolist() == pytest.approx([-x for x in g], rel=1e-10, abs=1e-14)
    assert rw.grad.tolist() == pytest.approx([-x for x in g], rel=1e-10, abs=1e-14)
    assert rl.grad.tolist() == pytest.approx(g, rel=1e-10, abs=1e-14)


@SETTINGS
@given(batch=dpo_batches(), beta=betas)
def test_reductions_to_sigmoid_at_documented_limits(
    batch: tuple[list[list[float]], list[int]], beta: float
) -> None:
    columns, lengths = batch
    x = tensors(columns)
    sigmoid_losses = dpo_loss(*x, beta=beta, reduction="none").losses
    for loss_type in ("label_smoothed", "robust"):
        same = dpo_loss(*x, beta=beta, loss_type=loss_type, label_smoothing=0.0, reduction="none")
        assert torch.allclose(same.losses, sigmoid_losses, rtol=1e-14, atol=0)
    for loss_type in DPO_LOSS_TYPES:
        base = dpo_loss(*x, beta=beta, loss_type=loss_type, label_smoothing=eps_for(loss_type))
        with_zero_rpo = dpo_loss(
            *x,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=eps_for(loss_type),
            rpo_alpha=0.0,
            chosen_n_tokens=torch.tensor(lengths),
        )
        assert with_zero_rpo.loss.item() == base.loss.item()


@SETTINGS
@given(batch=dpo_batches(), beta=betas, eps=st.floats(min_value=0.0, max_value=0.49))
def test_robust_is_unbiased_under_label_flips(
    batch: tuple[list[list[float]], list[int]], beta: float, eps: float
) -> None:
    """(1−ε)·ℓ_rob(y_w ≻ y_l) + ε·ℓ_rob(y_l ≻ y_w) = −log σ(h)  (rDPO's defining property)."""
    pw, pl, rw, rl = tensors(batch[0])
    kw = {"beta": beta, "loss_type": "robust", "label_smoothing": eps, "reduction": "none"}
    forward = dpo_loss(pw, pl, rw, rl, **kw).losses
    flipped = dpo_loss(pl, pw, rl, rw, **kw).losses
    clean = dpo_loss(pw, pl, rw, rl, beta=beta, reduction="none").losses
    mixed = (1 - eps) * forward + eps * flipped
    assert torch.allclose(mixed, clean, rtol=1e-8, atol=1e-8 / (1 - 2 * eps))


@SETTINGS
@given(batch=dpo_batches(), beta=betas, eps=st.floats(min_value=0.0, max_value=1.0))
def test_label_smoothed_is_soft_target_cross_entropy(
    batch: tuple[list[list[float]], list[int]], beta: float, eps: float
) -> None:
    pw, pl, rw, rl = tensors(batch[0])
    out = dpo_loss(
        pw,
        pl,
        rw,
        rl,
        beta=beta,
        loss_type="label_smoothed",
        label_smoothing=eps,
        reduction="none",
    )
    h = beta * ((pw - rw) - (pl - rl))
    target = torch.full_like(h, 1 - eps)
    reference = F.binary_cross_entropy_with_logits(h, target, reduction="none")
    assert torch.allclose(out.losses, reference, rtol=1e-10, atol=1e-12)
    # ε = ½ (fully uncertain labels): the loss ignores which response was chosen.
    kw = {"beta": beta, "loss_type": "label_smoothed", "label_smoothing": 0.5, "reduction": "none"}
    half = dpo_loss(pw, pl, rw, rl, **kw).losses
    assert torch.allclose(half, dpo_loss(pl, pw, rl, rw, **kw).losses, rtol=1e-12)


@SETTINGS
@given(
    columns=st.integers(min_value=1, max_value=5).flatmap(
        lambda n: st.tuples(*[st.lists(logp, min_size=n, max_size=n) for _ in range(2)])
    ),
    beta=betas,
)
def test_reference_equal_to_policy(columns: tuple[list[float], list[float]], beta: float) -> None:
    """At initialisation (π_θ = π_ref) h = 0: sigmoid / label-smoothed / robust give log 2,
    IPO gives 1/(4β²), hinge gives 1, and the implicit rewards are zero."""
    chosen, rejected = tensors(list(columns))
    expected = {
        "sigmoid": math.log(2),
        "label_smoothed": math.log(2),
        "robust": math.log(2),
        "ipo": 1 / (4 * beta**2),
        "hinge": 1.0,
    }
    for loss_type, value in expected.items():
        out = dpo_loss(
            chosen,
            rejected,
            chosen.clone(),
            rejected.clone(),
            beta=beta,
            loss_type=loss_type,
            label_smoothing=eps_for(loss_type),
        )
        assert out.loss.item() == pytest.approx(value, rel=1e-12), loss_type
        assert torch.count_nonzero(out.margins) == 0


@SETTINGS
@given(batch=dpo_batches(), beta=betas, shift=st.floats(min_value=-20.0, max_value=20.0))
def test_invariant_to_a_shared_shift_of_policy_and_reference(
    batch: tuple[list[list[float]], list[int]], beta: float, shift: float
) -> None:
    pw, pl, rw, rl = tensors(batch[0])
    for loss_type in DPO_LOSS_TYPES:
        kw = {"beta": beta, "loss_type": loss_type, "label_smoothing": eps_for(loss_type)}
        base = dpo_loss(pw, pl, rw, rl, **kw)
        shifted = dpo_loss(pw + shift, pl, rw + shift, rl, **kw)
        assert shifted.loss.item() == pytest.approx(base.loss.item(), rel=1e-9, abs=1e-9)


def test_stable_for_large_margins() -> None:
    x = [torch.tensor([v], dtype=torch.float32) for v in (-1.0, -2000.0, -1.0, -1.0)]
    assert dpo_loss(*x, beta=1.0).loss.item() == 0.0
    y = [torch.tensor([v], dtype=torch.float32) for v in (-2000.0, -1.0, -1.0, -1.0)]
    assert dpo_loss(*y, beta=1.0).loss.item() == pytest.approx(1999.0, rel=1e-6)
    robust = dpo_loss(*y, beta=1.0, loss_type="robust", label_smoothing=0.4)
    assert math.isfinite(robust.loss.item())


def _good_args() -> dict:
    return {
        "policy_chosen_logps": torch.tensor([-1.0, -2.0], dtype=F64),
        "policy_rejected_logps": torch.tensor([-3.0, -2.5], dtype=F64),
        "reference_chosen_logps": torch.tensor([-1.5, -2.0], dtype=F64),
        "reference_rejected_logps": torch.tensor([-2.0, -2.0], dtype=F64),
    }


def _bad(name: str, *values: float) -> tuple[dict, str]:
    return {name: torch.tensor(values, dtype=F64)}, name


BAD_INPUTS = [
    ({"policy_chosen_logps": torch.zeros(3, dtype=F64)}, "policy_chosen_logps"),
    ({"reference_rejected_logps": torch.zeros(1, dtype=F64)}, "reference_rejected_logps"),
    ({"policy_rejected_logps": torch.tensor([], dtype=F64)}, "policy_rejected_logps"),
    _bad("policy_chosen_logps", math.nan, -1.0),
    _bad("policy_rejected_logps", -math.inf, -1.0),
    _bad("reference_chosen_logps", -1.0, math.nan),
    _bad("reference_rejected_logps", math.inf, 0.0),
    ({"beta": 0.0}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"beta": math.nan}, "beta"),
    ({"loss_type": "kto"}, "loss_type"),
    ({"reduction": "max"}, "reduction"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing"),
    ({"loss_type": "robust", "label_smoothing": 0.7}, "label_smoothing"),
    ({"loss_type": "robust", "label_smoothing": -0.1}, "label_smoothing"),
    ({"loss_type": "label_smoothed", "label_smoothing": 1.5}, "label_smoothing"),
    ({"loss_type": "label_smoothed", "label_smoothing": -0.01}, "label_smoothing"),
    ({"loss_type": "sigmoid", "label_smoothing": 0.1}, "label_smoothing"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
    ({"rpo_alpha": -1.0}, "rpo_alpha"),
    ({"rpo_alpha": 1.0}, "chosen_n_tokens"),
    ({"rpo_alpha": 1.0, "chosen_n_tokens": torch.tensor([3, 0])}, "chosen_n_tokens"),
    ({"rpo_alpha": 1.0, "chosen_n_tokens": torch.tensor([3, -2])}, "chosen_n_tokens"),
    ({"rpo_alpha": 1.0, "chosen_n_tokens": torch.tensor([3])}, "chosen_n_tokens"),
    ({"chosen_n_tokens": torch.tensor([0.0, 1.0])}, "chosen_n_tokens"),
]


@pytest.mark.parametrize(("override", "name"), BAD_INPUTS)
def test_bad_input_names_the_argument(override: dict, name: str) -> None:
    args = {**_good_args(), **override}
    positional = [args.pop(key) for key in list(_good_args())]
    with pytest.raises(ValueError, match=name):
        dpo_loss(*positional, **args)


def test_implicit_reward_bad_input() -> None:
    good = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="beta"):
        implicit_reward(good, good, 0.0)
    with pytest.raises(ValueError, match="reference_logps"):
        implicit_reward(good, torch.zeros(3, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="policy_logps"):
        implicit_reward(torch.tensor([math.nan, 0.0]), good, 0.1)
    with pytest.raises(TypeError, match="beta"):
        implicit_reward(good, good, "0.1")  # type: ignore[arg-type]
