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

DT = torch.float64
# conftest's separable_policy_problem with a reward nonlinear in φ; the 80 extra policy values
# make |θ| large enough for the memory rule (B·|φ| = 6·12 = 72)
MLP = {"n_prompts": 8, "reward": "mlp", "extra_theta": 80}


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
def test_jacobian_path_equals_the_vjp_path(method, options, kept, separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(**MLP)
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


def test_unrolled_with_jacobian_equals_full_graph_autograd(separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(3, **MLP)
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
def test_property_jacobian_and_vjp_paths_agree(seed, steps, lr, case, separable_problem):
    method, options, _ = case
    options = dict(options)
    if "truncate" in options:
        options["truncate"] = min(options["truncate"], steps)
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(
        seed, steps=steps, **MLP
    )
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
def test_memory_rule_falls_back_to_the_vjp_path(method, separable_problem):
    """``|θ| = 6 < B·|φ| = 72``: no Jacobian is kept, the result is still the same."""
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(
        **{**MLP, "extra_theta": 0}
    )
    counted = Counted(features)
    with_jac = SeparableInnerLoss(counted, loss, feature_jacobian=counted.jacobian)
    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(with_jac, outer, *args, lr=0.4, method=method)
    slow = hypergradient(SeparableInnerLoss(features, loss), outer, *args, lr=0.4, method=method)
    assert rel_err(fast.grad, slow.grad) < 1e-10
    assert fast.details["feature_jacobian_steps"] == 0
    assert fast.details["feature_jacobian_declined"] == 1
    assert counted.jacobian_calls == 1  # tried once, then off for the rest of the unroll


def test_declining_jacobian_falls_back(separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(**MLP)
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


def test_implicit_methods_ignore_the_jacobian(separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(**MLP)
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
def test_malformed_jacobians_are_rejected(bad, error, match, separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(steps=1, **MLP)
    counted = Counted(features)
    inner = SeparableInnerLoss(
        features, loss, feature_jacobian=lambda p, b: bad(*counted.jacobian(p, b))
    )
    with pytest.raises(error, match=match):
        hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.4)


def test_feature_jacobian_must_be_callable(separable_problem):
    features, loss, *_ = separable_problem(steps=1, **MLP)
    with pytest.raises(TypeError, match="feature_jacobian must be callable"):
        SeparableInnerLoss(features, loss, feature_jacobian=3)
