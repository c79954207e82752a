"""The conformance kit ``oodpl.core.testing``: it must pass correct gradients, catch wrong ones,
and its finite-difference references must equal closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from oodpl.core.hypergrad import unrolled_hypergradient
from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss
from oodpl.core.testing import (
    GradientCheck,
    check_gradient,
    check_hypergradient,
    finite_difference_gradient,
    finite_difference_hypergradient,
    relative_error,
    unrolled_outer_loss,
)

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads; on a loaded machine they cost 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _WrongGradient(torch.autograd.Function):
    """x ↦ sin(x) with a deliberately wrong backward (cos(x) * 1.01)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x) * 1.01


def test_finite_difference_gradient_matches_closed_form():
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=DT)
    params = {"x": torch.tensor([0.5, -1.0], dtype=DT), "s": torch.tensor(0.7, dtype=DT)}

    def fn(p):
        return 0.5 * p["x"] @ a @ p["x"] + torch.exp(p["s"]) * p["x"].sum()

    grad = finite_difference_gradient(fn, params)
    expected_x = a @ params["x"] + math.exp(0.7)
    expected_s = math.exp(0.7) * float(params["x"].sum())
    assert torch.allclose(grad["x"], expected_x, atol=1e-8)
    assert float(grad["s"]) == pytest.approx(expected_s, abs=1e-8)
    assert torch.equal(params["x"], torch.tensor([0.5, -1.0], dtype=DT))  # not modified


@pytest.mark.parametrize("n_directions", [None, 5])
def test_check_gradient_passes_a_real_loss(n_directions):
    gen = torch.Generator().manual_seed(0)
    logps = -torch.rand(6, generator=gen, dtype=DT) * 5
    n_tok = torch.randint(1, 9, (6,), generator=gen)
    rewards = torch.randn(6, generator=gen, dtype=DT)
    check = check_gradient(
        lambda p: reward_weighted_regression_loss(p["logps"], n_tok, p["rewards"], beta=0.5),
        {"logps": logps, "rewards": rewards},
        n_directions=n_directions,
    )
    assert isinstance(check, GradientCheck) and check.passed
    assert check.mode == ("coordinates" if n_directions is None else "directions")
    assert check.rel_error < 1e-7


def test_check_gradient_accepts_a_single_tensor():
    x = torch.randn(4, dtype=DT)
    check = check_gradient(lambda t: (t**3).sum(), x)
    assert torch.allclose(check.analytic, 3 * x**2)
    assert check.numeric.shape == (4,)


@pytest.mark.parametrize("n_directions", [None, 3])
def test_check_gradient_catches_a_one_percent_error(n_directions):
    x = {"x": torch.linspace(0.1, 1.0, 5, dtype=DT)}
    with pytest.raises(AssertionError, match="FAILED"):
        check_gradient(lambda p: _WrongGradient.apply(p["x"]).sum(), x, n_directions=n_directions)
    report = check_gradient(lambda p: _WrongGradient.apply(p["x"]).sum(), x, raise_on_failure=False)
    assert not report.passed
    assert report.rel_error == pytest.approx(0.01, rel=1e-3)


def test_check_gradient_switches_to_directions_for_large_inputs():
    x = {"x": torch.randn(50, dtype=DT)}
    check = check_gradient(lambda p: torch.sum(torch.tanh(p["x"]) ** 2), x, max_coordinates=10)
    assert check.mode == "directions" and check.passed


def test_check_gradient_validates_arguments():
    with pytest.raises(TypeError, match="fn"):
        check_gradient(None, {"x": torch.zeros(2)})
    with pytest.raises(TypeError, match="params"):
        check_gradient(lambda p: p["x"].sum(), {"x": [1.0]})
    with pytest.raises(ValueError, match="fn must return a scalar"):
        check_gradient(lambda p: p["x"], {"x": torch.zeros(2, dtype=DT)})
    with pytest.raises(ValueError, match="eps"):
        finite_difference_gradient(lambda p: p["x"].sum(), {"x": torch.zeros(2)}, eps=0.0)
    with pytest.raises(ValueError, match="n_directions"):
        check_gradient(lambda p: p["x"].sum(), {"x": torch.zeros(2)}, n_directions=0)


def test_relative_error():
    a = {"x": torch.tensor([1.0, 0.0])}
    b = {"x": torch.tensor([1.0, 1.0])}
    assert relative_error(a, b) == pytest.approx(1 / math.sqrt(2))
    assert relative_error(a, a) == 0.0
    assert relative_error(a, {"x": torch.zeros(2)}) == math.inf


def scalar_problem():
    """θ, φ scalars: L_in = ½ a θ² − b φ θ; θ^{k+1} = (1 − αa)θ^k + αbφ; L_out = ½ (θ − t)²."""
    a, b, t = 2.0, 1.5, 0.3

    def inner(theta, phi, batch):
        return 0.5 * a * theta["x"] ** 2 - b * phi["p"] * theta["x"]

    def outer(theta, batch):
        return 0.5 * (theta["x"] - t) ** 2

    return inner, outer, a, b, t


@pytest.mark.parametrize("truncate", [None, 1, 3])
def test_unrolled_outer_loss_and_its_finite_differences_match_closed_form(truncate):
    inner, outer, a, b, t = scalar_problem()
    lr, steps, theta0, phi0 = 0.2, 5, 1.0, 0.8
    theta = {"x": torch.tensor(theta0, dtype=DT)}
    phi = {"p": torch.tensor(phi0, dtype=DT)}
    decay = 1 - lr * a
    theta_k = decay**steps * theta0 + lr * b * phi0 * sum(decay**j for j in range(steps))
    value = unrolled_outer_loss(inner, outer, theta, phi, [None] * steps, None, lr=lr)
    assert value == pytest.approx(0.5 * (theta_k - t) ** 2, rel=1e-12)
    depth = steps if truncate is None else truncate
    d_theta = lr * b * sum(decay**j for j in range(depth))  # only the last `depth` steps see φ
    fd = finite_difference_hypergradient(
        inner, outer, theta, phi, [None] * steps, None, lr=lr, truncate=truncate
    )
    assert float(fd["p"]) == pytest.approx(d_theta * (theta_k - t), rel=1e-8)


def test_unrolled_outer_loss_validates():
    inner, outer, *_ = scalar_problem()
    theta = {"x": torch.tensor(1.0, dtype=DT)}
    phi = {"p": torch.tensor(0.8, dtype=DT)}
    with pytest.raises(ValueError, match="lr"):
        unrolled_outer_loss(inner, outer, theta, phi, [None], None, lr=0)
    with pytest.raises(ValueError, match="truncate"):
        unrolled_outer_loss(inner, outer, theta, phi, [None], None, lr=0.1, truncate=2)
    with pytest.raises(ValueError, match="inner_batches"):
        unrolled_outer_loss(inner, outer, theta, phi, [], None, lr=0.1)


def policy_problem():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 3, 4, generator=gen, dtype=DT)
    rfeats = torch.randn(5, 3, 2, generator=gen, dtype=DT)

    def logps(theta, cands):
        return torch.log_softmax(feats @ theta["w"], -1).gather(-1, cands[:, None]).squeeze(-1)

    def inner(theta, phi, cands):
        lp = logps(theta, cands)
        rewards = rfeats[torch.arange(5), cands] @ phi["r"]
        return reward_weighted_regression_loss(lp, torch.ones_like(lp), rewards)

    def outer(theta, batch):
        chosen, rejected = batch
        lw, ll = logps(theta, chosen), logps(theta, rejected)
        return policy_preference_loss(lw, torch.ones_like(lw), ll, torch.ones_like(ll))

    theta0 = {"w": torch.randn(4, generator=gen, dtype=DT)}
    phi = {"r": torch.randn(2, generator=gen, dtype=DT)}
    batches = [torch.randint(0, 3, (5,), generator=gen) for _ in range(4)]
    query = (torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long))
    return inner, outer, theta0, phi, batches, query


@pytest.mark.parametrize(
    ("method", "options", "rtol"),
    [
        ("unrolled", {}, 1e-6),
        ("truncated", {"truncate": 2}, 1e-6),
        ("truncated", {}, 1e-6),
        ("first_order", {"radius": 1e-3}, 1e-4),
        ("first_order", {"radius": 1e-3, "truncate": 1}, 1e-4),
    ],
)
def test_check_hypergradient_passes_each_method_against_its_own_reference(method, options, rtol):
    inner, outer, theta0, phi, batches, query = policy_problem()
    check = check_hypergradient(
        inner, outer, theta0, phi, batches, query, lr=0.5, method=method, rtol=rtol, **options
    )
    assert check.passed


def test_check_hypergradient_catches_a_broken_mixed_derivative():
    """A loss whose gradient path to φ is halved (value unchanged) must fail the check."""
    inner, outer, theta0, phi, batches, query = policy_problem()

    def broken_inner(theta, phi_, batch):
        half = {k: v.detach() + 0.5 * (v - v.detach()) for k, v in phi_.items()}
        return inner(theta, half, batch)

    report = check_hypergradient(
        broken_inner, outer, theta0, phi, batches, query, lr=0.5, raise_on_failure=False
    )
    assert not report.passed
    assert report.rel_error == pytest.approx(0.5, rel=1e-4)
    with pytest.raises(AssertionError, match="unrolled hypergradient check FAILED"):
        check_hypergradient(broken_inner, outer, theta0, phi, batches, query, lr=0.5)


def test_implicit_methods_pass_against_a_converged_unroll():
    inner, outer, theta0, phi, batches, query = policy_problem()

    def regularised(theta, phi_, batch):
        return inner(theta, phi_, batch) + 0.5 * torch.sum(theta["w"] ** 2)

    full = [batches[0]] * 60
    for method in ("cg", "neumann"):
        options = {"method": method, "rtol": 1e-5, "terms": 40}
        check = check_hypergradient(regularised, outer, theta0, phi, full, query, lr=0.5, **options)
        assert check.passed, check.summary()
    options = {"method": "cg", "raise_on_failure": False}
    report = check_hypergradient(
        regularised, outer, theta0, phi, full[:2], query, lr=0.5, **options
    )
    assert not report.passed  # two inner steps are far from θ*: the kit says so


def test_kit_and_library_agree():
    inner, outer, theta0, phi, batches, query = policy_problem()
    fd = finite_difference_hypergradient(inner, outer, theta0, phi, batches, query, lr=0.5)
    exact = unrolled_hypergradient(inner, outer, theta0, phi, batches, query, lr=0.5)
    assert relative_error(exact.grad, fd) < 1e-7
    with pytest.raises(ValueError, match="method"):
        check_hypergradient(inner, outer, theta0, phi, batches, query, lr=0.5, method="exact")
