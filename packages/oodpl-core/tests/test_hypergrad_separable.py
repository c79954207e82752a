"""Separable inner losses (``φ`` only through per-batch features) and the reused last-step graph.

``SeparableInnerLoss(features, loss)`` is the same function as ``loss(θ, features(φ, b), b)``,
so every method must give the same hypergradient through the split (chain-rule) path as through
the generic one, to round-off in float64; the exact methods must still equal full-graph
autograd through all K steps (the inner loop's last step now builds the graph the reverse pass
starts from).
"""

from __future__ import annotations

import pytest
import torch

from oodpl.core.hypergrad import SeparableInnerLoss, hypergradient, unrolled_hypergradient
from oodpl.core.hypergrad import _differences as D
from oodpl.core.hypergrad import _params as P

DT = torch.float64


def full_graph(inner_loss, outer_loss, theta0, phi, batches, outer_batch, lr):
    """Plain autograd through all K steps (the reference the reverse recurrence must match)."""
    ph = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    theta = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    for batch in batches:
        grads = torch.autograd.grad(
            inner_loss(theta, ph, batch), list(theta.values()), create_graph=True
        )
        theta = {k: theta[k] - lr * g for k, g in zip(theta, grads, strict=True)}
    grads = torch.autograd.grad(
        outer_loss(theta, outer_batch), list(ph.values()), allow_unused=True
    )
    return {k: torch.zeros_like(ph[k]) if g is None else g for k, g in zip(ph, grads, strict=True)}


def rel_err(a, b):
    return float(P.norm(P.sub(a, b))) / float(P.norm(b))


@pytest.mark.parametrize(
    ("method", "options", "tol"),
    [
        ("unrolled", {}, 1e-10),
        ("truncated", {"truncate": 2}, 1e-10),
        ("first_order", {"radius": 1e-3}, 1e-9),
        ("first_order", {"radius": 1e-3, "truncate": 1}, 1e-9),
        ("first_order", {"radius": 1e-3, "scheme": "forward"}, 1e-9),
        ("first_order", {"radius": 1e-3, "scheme": "forward", "truncate": 2}, 1e-9),
        ("neumann", {"terms": 3}, 1e-10),
        ("cg", {"terms": 2}, 1e-10),
    ],
)
def test_separable_path_equals_the_generic_path(method, options, tol, separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem()
    separable = SeparableInnerLoss(features, loss)

    def generic(theta, phi_, batch):  # the same function, seen as an opaque callable
        return loss(theta, features(phi_, batch), batch)

    args = (theta0, phi, batches, outer_batch)
    fast = hypergradient(separable, outer, *args, lr=0.4, method=method, **options)
    slow = hypergradient(generic, outer, *args, lr=0.4, method=method, **options)
    assert rel_err(fast.grad, slow.grad) < tol, method
    assert torch.equal(fast.grad["unused"], torch.zeros(2, 2, dtype=DT))
    assert fast.inner_losses == pytest.approx(slow.inner_losses, rel=1e-13)
    assert fast.outer_loss == pytest.approx(slow.outer_loss, rel=1e-13)
    for key in theta0:
        torch.testing.assert_close(fast.theta[key], slow.theta[key], rtol=1e-13, atol=0)


@pytest.mark.parametrize("separable", [True, False])
def test_exact_methods_equal_full_graph_autograd(separable, separable_problem):
    """Reverse recurrence (last step's graph from the inner loop, the others rebuilt) ==
    autograd through the whole unrolled graph, for K = 1 and K = 4."""
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(1)
    separable_loss = SeparableInnerLoss(features, loss)
    inner = separable_loss if separable else (lambda t, p, b: separable_loss(t, p, b))
    for k in (1, 4):
        exact = unrolled_hypergradient(inner, outer, theta0, phi, batches[:k], outer_batch, lr=0.4)
        reference = full_graph(separable_loss, outer, theta0, phi, batches[:k], outer_batch, 0.4)
        assert rel_err(exact.grad, reference) < 1e-11, k
        assert exact.grad_norm > 0


def test_separable_cost_model(separable_problem):
    """features: once per inner step in the inner loop + one vector-Jacobian product per rebuilt
    reverse step (the exact methods' last step keeps its first-order features graph from the inner
    loop); loss: K + (T − 1) for the exact methods (the last step's graph is reused), K + 2K for
    central first-order, K + K for forward first-order."""
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(2)
    counts = {"features": 0, "loss": 0}

    def counted_features(phi_, batch):
        counts["features"] += 1
        return features(phi_, batch)

    def counted_loss(theta, rewards, batch):
        counts["loss"] += 1
        return loss(theta, rewards, batch)

    inner = SeparableInnerLoss(counted_features, counted_loss)
    expected = {
        ("unrolled", ()): (4 + 3, 4 + 3),
        ("truncated", (("truncate", 2),)): (4 + 1, 4 + 1),
        ("first_order", ()): (4 + 4, 4 + 2 * 4),
        ("first_order", (("scheme", "forward"),)): (4 + 4, 4 + 4),
        ("first_order", (("scheme", "forward"), ("truncate", 3))): (4 + 3, 4 + 3),
    }
    for (method, options), (n_features, n_loss) in expected.items():
        counts.update(features=0, loss=0)
        hypergradient(
            inner, outer, theta0, phi, batches, outer_batch, lr=0.4, method=method, **dict(options)
        )
        assert counts == {"features": n_features, "loss": n_loss}, method


def test_separable_inner_loss_checks_its_parts(separable_problem):
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(3)
    with pytest.raises(TypeError, match="features must be callable"):
        SeparableInnerLoss(None, loss)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss must be callable"):
        SeparableInnerLoss(features, 3)  # type: ignore[arg-type]
    bad = SeparableInnerLoss(lambda p, b: [1.0], loss)
    with pytest.raises(TypeError, match="features must return a floating-point"):
        unrolled_hypergradient(bad, outer, theta0, phi, batches, outer_batch, lr=0.4)
    nan = SeparableInnerLoss(lambda p, b: features(p, b) * float("nan"), loss)
    with pytest.raises(FloatingPointError, match="features returned non-finite"):
        unrolled_hypergradient(nan, outer, theta0, phi, batches, outer_batch, lr=0.4)
    # calling it is the plain contract
    value = SeparableInnerLoss(features, loss)(theta0, phi, batches[0])
    assert torch.equal(value, loss(theta0, features(phi, batches[0]), batches[0]))


def test_exact_products_run_sdpa_on_its_math_kernel_only_where_differentiated_twice():
    """A loss through ``scaled_dot_product_attention``: on CPU its fused (flash) kernel has no
    double backward, so the hypergradient restricts SDPA to the math kernel exactly in the steps
    it differentiates twice; the other inner steps keep the fused kernel. No context needed."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 5, 4, generator=gen, dtype=DT)  # batch, heads, tokens, dim
    theta0 = {"q": 0.5 * torch.randn(4, 4, generator=gen, dtype=DT)}
    phi = {"u": torch.randn(4, generator=gen, dtype=DT)}
    kernels = []

    def attend(theta):
        kernels.append(torch.backends.cuda.flash_sdp_enabled())
        q = x @ theta["q"]
        return torch.nn.functional.scaled_dot_product_attention(q, x, x, is_causal=True)

    def inner(theta, phi_, batch):
        out = attend(theta)
        return torch.mean(torch.tanh(out @ phi_["u"]) * out.sum(-1)) + 0.1 * (theta["q"] ** 2).sum()

    def outer(theta, batch):
        return torch.mean(attend(theta) ** 2)

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        reference = full_graph(inner, outer, theta0, phi, [None] * 3, None, 0.3)
    with pytest.raises(RuntimeError, match="not implemented"):  # what the restriction avoids
        full_graph(inner, outer, theta0, phi, [None] * 3, None, 0.3)
    kernels.clear()
    exact = unrolled_hypergradient(inner, outer, theta0, phi, [None] * 3, None, lr=0.3)
    assert rel_err(exact.grad, reference) < 1e-10
    # inner steps 0, 1 fused; step 2 builds the reused graph (math); outer fused; reverse 1, 0 math
    assert kernels == [True, True, False, True, False, False]
    approx = hypergradient(
        inner, outer, theta0, phi, [None] * 3, None, lr=0.3, method="first_order"
    )
    assert rel_err(approx.grad, reference) < 1e-3


@pytest.mark.parametrize("separable", [True, False])
def test_forward_differences_converge_to_unrolled_like_radius(separable, separable_problem):
    """One-sided differences against the inner loop's gradients: error ``O(R)`` (first order
    in R, unlike the central scheme's ``O(R²)``), and a wrong scheme name is refused."""
    features, loss, outer, theta0, phi, batches, outer_batch = separable_problem(5)
    separable_loss = SeparableInnerLoss(features, loss)
    inner = separable_loss if separable else (lambda t, p, b: separable_loss(t, p, b))
    args = (inner, outer, theta0, phi, batches, outer_batch)
    exact = unrolled_hypergradient(*args, lr=0.4).grad
    errors = {}
    for radius in (1e-1, 1e-2, 1e-3):
        approx = hypergradient(*args, lr=0.4, method="first_order", radius=radius, scheme="forward")
        errors[radius] = rel_err(approx.grad, exact)
    central = hypergradient(*args, lr=0.4, method="first_order", radius=1e-2)
    print("forward-difference relative error by radius:", errors)
    for radius, error in errors.items():
        assert error < 2.0 * radius, radius
    assert 3 < errors[1e-1] / errors[1e-2] < 30  # first-order convergence, not luck
    assert errors[1e-2] > 10 * rel_err(central.grad, exact)  # central is more accurate
    with pytest.raises(ValueError, match="scheme must be one of"):
        hypergradient(*args, lr=0.4, method="first_order", scheme="backward")


# --- the earliest reverse step of first_order: J^T v only -------------------------------------
# Its H v never enters the hypergradient, so its gradient evaluations leave θ out of the graph.
# Checked by counting the evaluations whose θ requires grad, and by the result: identical to a
# run that computes the unused H v (forced back on), and the unrolled hypergradient to the
# finite-difference tolerance, for the separable and the generic inner loss.


def _recording(features, loss, separable: bool):
    """The inner loss, plus a list of ``requires_grad`` of θ at each evaluation."""
    seen: list[bool] = []

    def tracked(theta, rewards, batch):
        seen.append(all(t.requires_grad for t in theta.values()))
        return loss(theta, rewards, batch)

    if separable:
        return SeparableInnerLoss(features, tracked), seen
    return (lambda theta, phi, batch: tracked(theta, features(phi, batch), batch)), seen


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize(("scheme", "per_step"), [("central", 2), ("forward", 1)])
def test_the_earliest_step_differentiates_w_r_t_phi_only(
    separable, scheme, per_step, monkeypatch, separable_problem
):
    features, loss, outer_loss, theta0, phi, batches, outer_batch = separable_problem(seed=3)
    k = len(batches)

    def solve(inner, method: str, **options):
        return hypergradient(
            inner, outer_loss, theta0, phi, batches, outer_batch, lr=0.2, method=method, **options
        )

    def run(force_hvp: bool):
        inner, seen = _recording(features, loss, separable)
        if force_hvp:  # the products of every step computed in full, as before the shortcut
            for name in ("separable_gradients", "inner_gradients"):
                original = getattr(D, name)

                def full(*args, _original=original, **kwargs):
                    kwargs["wrt_theta"] = True
                    return _original(*args, **kwargs)

                monkeypatch.setattr(D, name, full)
        result = solve(inner, "first_order", radius=1e-4, scheme=scheme)
        monkeypatch.undo()
        return result, seen

    fast, seen = run(force_hvp=False)
    reverse = seen[k:]  # the inner loop's K evaluations come first
    assert len(reverse) == per_step * k
    assert reverse.count(False) == per_step  # the earliest step only
    assert all(reverse[: per_step * (k - 1)]) and not any(reverse[per_step * (k - 1) :])
    full, seen_full = run(force_hvp=True)
    assert all(seen_full)
    for name in fast.grad:
        assert torch.allclose(fast.grad[name], full.grad[name], rtol=1e-12, atol=1e-15), name
    exact = solve(SeparableInnerLoss(features, loss), "unrolled")
    error = P.norm(P.add(fast.grad, exact.grad, -1.0)) / P.norm(exact.grad)
    assert float(error) < (1e-6 if scheme == "central" else 1e-3)
