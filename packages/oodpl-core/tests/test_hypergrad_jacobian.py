"""Per-sample feature Jacobians of a separable inner loss (``feature_jacobian``, METHODS §3).

``J_kᵀ v = Σ_i c_{k,i} ∂a_{k,i}/∂φ``: with the Jacobians kept by the inner loop, every iterative
method must give the same hypergradient as the vector-Jacobian path (float64, to round-off),
without calling ``features`` for the kept steps; the memory rule ``B·|φ| ≤ |θ|`` and a declining
callable fall back to the vector-Jacobian path; malformed Jacobians are rejected by name.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.hypergrad import SeparableInnerLoss, hypergradient
from oodpl.core.hypergrad import _params as P
from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss

DT = torch.float64
N_PROMPTS, N_CAND, D_POLICY, D_REWARD, HIDDEN, ROWS = 8, 4, 5, 3, 2, 6


def make_problem(seed: int = 0, steps: int = 4, extra_theta: int = 80):
    """Softmax policy over candidates, a one-hidden-layer reward ``r_φ`` (nonlinear in ``φ``),
    reward-weighted regression + proximal inner loss, Bradley-Terry outer loss. ``extra_theta``
    extra policy parameters (in the proximal term) make ``|θ|`` large enough for the memory rule
    (``B·|φ| = 6·12 = 72``)."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(N_PROMPTS, N_CAND, D_POLICY, generator=gen, dtype=DT)
    rfeats = torch.randn(N_PROMPTS, N_CAND, D_REWARD, generator=gen, dtype=DT)
    lengths = torch.randint(1, 6, (N_PROMPTS, N_CAND), generator=gen)
    theta0 = {
        "w": 0.3 * torch.randn(D_POLICY, generator=gen, dtype=DT),
        "log_temp": torch.tensor(0.1, dtype=DT),
    }
    if extra_theta:
        theta0["extra"] = torch.randn(extra_theta, generator=gen, dtype=DT)
    phi = {
        "W": torch.randn(D_REWARD, HIDDEN, generator=gen, dtype=DT),
        "u": torch.randn(HIDDEN, generator=gen, dtype=DT),
        "bias": torch.tensor(0.3, dtype=DT),
        "unused": torch.randn(3, generator=gen, dtype=DT),
    }

    def logps(theta, prompts, cands):
        scale = torch.exp(theta["log_temp"]) * (1 + 0.01 * theta.get("extra", torch.zeros(1)).sum())
        logits = (feats[prompts] @ theta["w"]) * scale
        per_token = torch.log_softmax(logits, -1).gather(-1, cands[:, None]).squeeze(-1)
        n_tok = lengths[prompts, cands]
        return per_token * n_tok, n_tok

    def features(phi_, batch):
        prompts, cands = batch
        return torch.tanh(rfeats[prompts, cands] @ phi_["W"]) @ phi_["u"] + phi_["bias"]

    def loss(theta, rewards, batch):
        lp, n_tok = logps(theta, *batch)
        prox = sum(torch.sum((theta[k] - theta0[k]) ** 2) for k in theta)
        return reward_weighted_regression_loss(lp, n_tok, rewards, beta=0.5) + 0.05 * prox

    def outer_loss(theta, batch):
        prompts, chosen, rejected = batch
        return policy_preference_loss(
            *logps(theta, prompts, chosen), *logps(theta, prompts, rejected)
        )

    batches = [
        (
            torch.randint(0, N_PROMPTS, (ROWS,), generator=gen),
            torch.randint(0, N_CAND, (ROWS,), generator=gen),
        )
        for _ in range(steps)
    ]
    chosen = torch.randint(0, N_CAND, (N_PROMPTS,), generator=gen)
    rejected = (chosen + torch.randint(1, N_CAND, (N_PROMPTS,), generator=gen)) % N_CAND
    outer_batch = (torch.arange(N_PROMPTS), chosen, rejected)
    return features, loss, outer_loss, theta0, phi, batches, outer_batch


class Counted:
    """``features`` with a call counter; ``jacobian`` by ``torch.func.jacrev`` (independent of
    any per-sample rule), without the unused entry (it must come back as zeros)."""

    def __init__(self, features):
        self.features, self.calls, self.jacobian_calls = features, 0, 0

    def __call__(self, phi, batch):
        self.calls += 1
        return self.features(phi, batch)

    def jacobian(self, phi, batch):
        self.jacobian_calls += 1
        used = {k: v for k, v in phi.items() if k != "unused"}
        jac = torch.func.jacrev(lambda p: self.features({**phi, **p}, batch))(used)
        return self.features(phi, batch), jac


def rel_err(a, b):
    return float(P.norm(P.sub(a, b))) / float(P.norm(b))


CASES = [
    ("unrolled", {}, 4),
    ("truncated", {"truncate": 2}, 2),
    ("first_order", {"radius": 1e-3}, 4),
    ("first_order", {"radius": 1e-3, "truncate": 1}, 1),
    ("first_order", {"radius": 1e-3, "scheme": "forward"}, 4),
    ("first_order", {"radius": 1e-3, "scheme": "forward", "truncate": 3}, 3),
]


@pytest.mark.parametrize(("method", "options", "kept"), CASES)
def test_jacobian_path_equals_the_vjp_path(method, options, kept):
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem()
    counted = Counted(features)
    with_jac = SeparableInnerLoss(counted, loss, feature_jacobian=counted.jacobian)
    plain = SeparableInnerLoss(features, loss)
    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(with_jac, outer, *args, lr=0.4, method=method, **options)
    slow = hypergradient(plain, outer, *args, lr=0.4, method=method, **options)
    assert rel_err(fast.grad, slow.grad) < 1e-10, method
    assert torch.equal(fast.grad["unused"], torch.zeros(3, dtype=DT))
    assert fast.inner_losses == pytest.approx(slow.inner_losses, rel=1e-13)
    assert fast.outer_loss == pytest.approx(slow.outer_loss, rel=1e-13)
    # the kept steps take a_k from the Jacobian call; features only for the steps not kept,
    # and never in the reverse pass
    assert counted.jacobian_calls == kept
    assert counted.calls == len(batches) - kept
    assert fast.details["feature_jacobian_steps"] == kept
    assert fast.details["feature_jacobian_declined"] == 0
    assert "feature_jacobian_steps" not in slow.details


def test_unrolled_with_jacobian_equals_full_graph_autograd():
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem(seed=3)
    counted = Counted(features)
    inner = SeparableInnerLoss(counted, loss, feature_jacobian=counted.jacobian)
    result = hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.4)
    ph = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    theta = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    for batch in batches:
        grads = torch.autograd.grad(
            loss(theta, features(ph, batch), batch), list(theta.values()), create_graph=True
        )
        theta = {k: theta[k] - 0.4 * g for k, g in zip(theta, grads, strict=True)}
    reference = torch.autograd.grad(outer(theta, outer_batch), list(ph.values()), allow_unused=True)
    for (key, value), ref in zip(result.grad.items(), reference, strict=True):
        expected = torch.zeros_like(value) if ref is None else ref
        assert torch.allclose(value, expected, rtol=1e-10, atol=1e-13), key


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 4),
    lr=st.floats(0.05, 0.6),
    case=st.sampled_from(CASES),
)
def test_property_jacobian_and_vjp_paths_agree(seed, steps, lr, case):
    method, options, _ = case
    options = dict(options)
    if "truncate" in options:
        options["truncate"] = min(options["truncate"], steps)
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem(seed, steps)
    counted = Counted(features)
    with_jac = SeparableInnerLoss(counted, loss, feature_jacobian=counted.jacobian)
    plain = SeparableInnerLoss(features, loss)
    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(with_jac, outer, *args, lr=lr, method=method, **options)
    slow = hypergradient(plain, outer, *args, lr=lr, method=method, **options)
    scale = max(float(P.norm(slow.grad)), 1e-12)
    assert float(P.norm(P.sub(fast.grad, slow.grad))) <= 1e-10 * scale + 1e-14
    assert fast.details["feature_jacobian_steps"] == options.get("truncate", steps)


@pytest.mark.parametrize("method", ["unrolled", "first_order"])
def test_memory_rule_falls_back_to_the_vjp_path(method):
    """``|θ| = 6 < B·|φ| = 72``: no Jacobian is kept, the result is still the same."""
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem(extra_theta=0)
    counted = Counted(features)
    with_jac = SeparableInnerLoss(counted, loss, feature_jacobian=counted.jacobian)
    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(with_jac, outer, *args, lr=0.4, method=method)
    slow = hypergradient(SeparableInnerLoss(features, loss), outer, *args, lr=0.4, method=method)
    assert rel_err(fast.grad, slow.grad) < 1e-10
    assert fast.details["feature_jacobian_steps"] == 0
    assert fast.details["feature_jacobian_declined"] == 1
    assert counted.jacobian_calls == 1  # tried once, then off for the rest of the unroll


def test_declining_jacobian_falls_back():
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem()
    calls = []

    def decline(phi_, batch):
        calls.append(batch)
        return None

    inner = SeparableInnerLoss(features, loss, feature_jacobian=decline)
    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(inner, outer, *args, lr=0.4, method="truncated", truncate=3)
    slow = hypergradient(
        SeparableInnerLoss(features, loss), outer, *args, lr=0.4, truncate=3, method="truncated"
    )
    assert rel_err(fast.grad, slow.grad) < 1e-12
    assert len(calls) == 1
    assert fast.details["feature_jacobian_declined"] == 1


def test_implicit_methods_ignore_the_jacobian():
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem()
    counted = Counted(features)
    with_jac = SeparableInnerLoss(counted, loss, feature_jacobian=counted.jacobian)
    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(with_jac, outer, *args, lr=0.4, method="neumann", terms=3)
    slow = hypergradient(
        SeparableInnerLoss(features, loss), outer, *args, lr=0.4, method="neumann", terms=3
    )
    assert rel_err(fast.grad, slow.grad) < 1e-12
    assert counted.jacobian_calls == 0


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (lambda a, jac: [a, jac], TypeError, "must return \\(features"),
        (lambda a, jac: (a[:, None], jac), TypeError, "1-D floating-point"),
        (lambda a, jac: (a, {**jac, "nope": jac["u"]}), ValueError, "'nope', which is not in phi"),
        (lambda a, jac: (a, {**jac, "u": jac["u"][:1]}), ValueError, r"feature_jacobian\['u'\]"),
        (lambda a, jac: (a, {**jac, "u": jac["u"] * float("nan")}), FloatingPointError, "non-fin"),
    ],
)
def test_malformed_jacobians_are_rejected(bad, error, match):
    features, loss, outer, theta0, phi, batches, outer_batch = make_problem(steps=1)
    counted = Counted(features)
    inner = SeparableInnerLoss(
        features, loss, feature_jacobian=lambda p, b: bad(*counted.jacobian(p, b))
    )
    with pytest.raises(error, match=match):
        hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.4)


def test_feature_jacobian_must_be_callable():
    features, loss, *_ = make_problem(steps=1)
    with pytest.raises(TypeError, match="feature_jacobian must be callable"):
        SeparableInnerLoss(features, loss, feature_jacobian=3)
