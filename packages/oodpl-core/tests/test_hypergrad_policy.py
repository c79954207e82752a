"""Hypergradients on a small non-quadratic OODPL problem (acceptance item 4, part 2).

A softmax policy over ``C`` candidate responses per prompt (logits ``F[x, y] · w`` times a learned
temperature), a linear reward ``r_φ = G[x, y] · φ_r + φ_bias``, the paper's inner objective
(reward-weighted regression, [OODPL] Eq. 10, plus a proximal term ``½μ‖θ − θ_ref‖²``) and outer
objective (Bradley–Terry on the policy, Eq. 6–7). Responses have different token counts.
Every method is compared with central finite differences written out in this file (independent
of ``oodpl.core.testing``):

* unrolled — FD of the K-step unrolled computation, and full-graph autograd through all K steps;
* truncated(T) — FD of the *truncated computation*: the first ``K − T`` steps use the base φ and
  only the last T steps the perturbed φ (the function truncated back-propagation differentiates);
  ``T = K`` equals unrolled;
* first-order(R) — the unrolled hypergradient, with an error that shrinks like ``R²``;
* neumann / cg — FD of the *converged* inner solution ``θ*(φ)`` (many inner steps, gradient
  norm checked), to 1e-3 relative.
"""

from __future__ import annotations

import pytest
import torch

from oodpl.core.hypergrad import (
    first_order_hypergradient,
    implicit_hypergradient,
    truncated_hypergradient,
    unrolled_hypergradient,
)
from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads; on a loaded machine they cost 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


N_PROMPTS, N_CAND, D_POLICY, D_REWARD = 12, 4, 5, 3


def make_problem(seed: int, *, temperature: bool = True, mu: float = 0.1, beta: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(N_PROMPTS, N_CAND, D_POLICY, generator=gen, dtype=DT)
    rfeats = torch.randn(N_PROMPTS, N_CAND, D_REWARD, generator=gen, dtype=DT)
    lengths = torch.randint(1, 6, (N_PROMPTS, N_CAND), generator=gen)
    theta0 = {"w": 0.3 * torch.randn(D_POLICY, generator=gen, dtype=DT)}
    if temperature:
        theta0["log_temp"] = torch.tensor(0.1, dtype=DT)
    theta_ref = {k: v.clone() for k, v in theta0.items()}
    phi = {
        "r": torch.randn(D_REWARD, generator=gen, dtype=DT),
        "bias": torch.tensor(0.3, dtype=DT),
        "unused": torch.randn(2, 2, generator=gen, dtype=DT),
    }

    def logps(theta, prompts, cands):
        logits = feats[prompts] @ theta["w"]
        if "log_temp" in theta:
            logits = logits * torch.exp(theta["log_temp"])
        per_token = torch.log_softmax(logits, -1).gather(-1, cands[:, None]).squeeze(-1)
        n_tok = lengths[prompts, cands]
        return per_token * n_tok, n_tok  # summed log-prob over |y| "tokens"

    def inner_loss(theta, phi_, batch):
        prompts, cands = batch
        lp, n_tok = logps(theta, prompts, cands)
        rewards = rfeats[prompts, cands] @ phi_["r"] + phi_["bias"]
        rwr = reward_weighted_regression_loss(lp, n_tok, rewards, beta=beta)
        prox = sum(torch.sum((theta[k] - theta_ref[k]) ** 2) for k in theta)
        return rwr + 0.5 * mu * prox

    def outer_loss(theta, batch):
        prompts, chosen, rejected = batch
        lw, nw = logps(theta, prompts, chosen)
        ll, nl = logps(theta, prompts, rejected)
        return policy_preference_loss(lw, nw, ll, nl)

    def support_batch(size: int):
        prompts = torch.randint(0, N_PROMPTS, (size,), generator=gen)
        return prompts, torch.randint(0, N_CAND, (size,), generator=gen)

    chosen = torch.randint(0, N_CAND, (N_PROMPTS,), generator=gen)
    rejected = (chosen + torch.randint(1, N_CAND, (N_PROMPTS,), generator=gen)) % N_CAND
    outer_batch = (torch.arange(N_PROMPTS), chosen, rejected)
    return inner_loss, outer_loss, theta0, phi, support_batch, outer_batch


def run_inner(inner_loss, theta0, phis, batches, lr):
    """Plain SGD; step k uses phis[k] (lets the truncated computation freeze early steps)."""
    theta = {k: v.clone() for k, v in theta0.items()}
    for phi, batch in zip(phis, batches, strict=True):
        leaves = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        grads = torch.autograd.grad(inner_loss(leaves, phi, batch), list(leaves.values()))
        theta = {k: (leaves[k] - lr * g).detach() for k, g in zip(leaves, grads, strict=True)}
    return theta


def central_differences(value, phi, eps=1e-6):
    grad = {}
    for key, tensor in phi.items():
        g = torch.zeros_like(tensor)
        for i in range(tensor.numel()):
            plus = {k: v.clone() for k, v in phi.items()}
            minus = {k: v.clone() for k, v in phi.items()}
            plus[key].view(-1)[i] += eps
            minus[key].view(-1)[i] -= eps
            g.view(-1)[i] = (value(plus) - value(minus)) / (2 * eps)
        grad[key] = g
    return grad


def rel_err(a, b):
    num = sum(float(torch.sum((a[k] - b[k]) ** 2)) for k in b) ** 0.5
    den = sum(float(torch.sum(b[k] ** 2)) for k in b) ** 0.5
    return num / den


def fd_unrolled(inner, outer, theta0, phi, batches, outer_batch, lr, truncate=None):
    steps = len(batches)
    frozen = steps - (truncate or steps)

    def value(p):
        phis = [phi] * frozen + [p] * (steps - frozen)
        return float(outer(run_inner(inner, theta0, phis, batches, lr), outer_batch))

    return central_differences(value, phi)


@pytest.fixture(scope="module")
def problem():
    inner, outer, theta0, phi, support_batch, outer_batch = make_problem(0)
    batches = [support_batch(8) for _ in range(6)]
    return inner, outer, theta0, phi, batches, outer_batch


@pytest.fixture(scope="module")
def fd_full(problem):
    inner, outer, theta0, phi, batches, outer_batch = problem
    return fd_unrolled(inner, outer, theta0, phi, batches, outer_batch, 0.7)


def test_unrolled_matches_finite_differences(problem, fd_full):
    inner, outer, theta0, phi, batches, outer_batch = problem
    result = unrolled_hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.7)
    assert rel_err(result.grad, fd_full) < 1e-6
    assert torch.equal(result.grad["unused"], torch.zeros(2, 2, dtype=DT))
    assert abs(float(result.grad["bias"])) < 1e-12  # softmax weights ignore a reward shift
    assert float(torch.linalg.norm(fd_full["r"])) > 1e-2  # the check is not vacuous


def test_unrolled_matches_autograd_through_the_whole_unrolled_graph(problem):
    inner, outer, theta0, phi, batches, outer_batch = problem
    live = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    theta = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
    for batch in batches:
        grads = torch.autograd.grad(
            inner(theta, live, batch), list(theta.values()), create_graph=True
        )
        theta = {k: theta[k] - 0.7 * g for k, g in zip(theta, grads, strict=True)}
    reference = torch.autograd.grad(outer(theta, outer_batch), live["r"])[0]
    result = unrolled_hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.7)
    assert torch.allclose(result.grad["r"], reference, rtol=1e-10, atol=1e-14)
    assert result.outer_loss == pytest.approx(float(outer(theta, outer_batch).detach()), rel=1e-12)


@pytest.mark.parametrize("truncate", [1, 3])
def test_truncated_matches_finite_differences_of_the_truncated_computation(problem, truncate):
    inner, outer, theta0, phi, batches, outer_batch = problem
    result = truncated_hypergradient(
        inner, outer, theta0, phi, batches, outer_batch, lr=0.7, truncate=truncate
    )
    expected = fd_unrolled(inner, outer, theta0, phi, batches, outer_batch, 0.7, truncate)
    assert rel_err(result.grad, expected) < 1e-6


def test_truncated_with_t_equal_k_is_unrolled(problem, fd_full):
    inner, outer, theta0, phi, batches, outer_batch = problem
    full = unrolled_hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.7)
    trunc = truncated_hypergradient(
        inner, outer, theta0, phi, batches, outer_batch, lr=0.7, truncate=len(batches)
    )
    for key in phi:
        assert torch.equal(trunc.grad[key], full.grad[key])
    one_step = truncated_hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.7)
    assert rel_err(one_step.grad, fd_full) > 1e-3  # truncation genuinely changes the answer


def test_first_order_converges_to_unrolled_like_radius_squared(problem):
    inner, outer, theta0, phi, batches, outer_batch = problem
    exact = unrolled_hypergradient(inner, outer, theta0, phi, batches, outer_batch, lr=0.7).grad
    errors = {}
    for radius in (1e-1, 1e-2, 1e-3):
        approx = first_order_hypergradient(
            inner, outer, theta0, phi, batches, outer_batch, lr=0.7, radius=radius
        )
        errors[radius] = rel_err(approx.grad, exact)
    print("first-order relative error vs unrolled by radius:", errors)
    for radius, error in errors.items():
        assert error < 0.5 * radius**2  # tolerance tied to R: O(R²) (measured ≈ 0.05 R²)
    assert 30 < errors[1e-1] / errors[1e-2] < 300  # second-order convergence, not luck
    assert errors[1e-1] > 1e-5  # the approximation is not accidentally exact here


def converged_problem():
    inner, outer, theta0, phi, _, outer_batch = make_problem(1, temperature=False)
    full_batch = (
        torch.arange(N_PROMPTS).repeat_interleave(N_CAND),
        torch.arange(N_CAND).repeat(N_PROMPTS),
    )
    return inner, outer, theta0, phi, full_batch, outer_batch


@pytest.fixture(scope="module")
def fd_converged():
    """Central differences of φ ↦ L_out(θ*(φ)) with θ* from 150 full-batch steps (checked).

    The Hessian of L_in has eigenvalues in about [0.43, 2.0] here, so lr = 0.8 contracts by
    about 0.65 per step and 150 steps reach round-off.
    """
    inner, outer, theta0, phi, full_batch, outer_batch = converged_problem()
    steps, lr = 150, 0.8

    def solve(p):
        theta = run_inner(inner, theta0, [p] * steps, [full_batch] * steps, lr)
        leaves = {k: v.requires_grad_(True) for k, v in theta.items()}
        (grad,) = torch.autograd.grad(inner(leaves, p, full_batch), [leaves["w"]])
        assert float(grad.norm()) < 1e-12, "inner problem not converged"
        return {k: v.detach() for k, v in theta.items()}

    return central_differences(lambda p: float(outer(solve(p), outer_batch)), phi)


@pytest.mark.parametrize(
    ("method", "options"),
    [("neumann", {"terms": 80}), ("cg", {"terms": 20})],
)
def test_implicit_matches_finite_differences_of_the_converged_solution(
    fd_converged, method, options
):
    inner, outer, theta0, phi, full_batch, outer_batch = converged_problem()
    errors = []
    for steps in (3, 150):
        batches = [full_batch] * steps
        result = implicit_hypergradient(
            inner, outer, theta0, phi, batches, outer_batch, lr=0.8, method=method, **options
        )
        errors.append(rel_err(result.grad, fd_converged))
    print(f"{method}: relative error vs FD of θ*(φ) after K = 3 and 150 inner steps:", errors)
    assert errors[1] < 1e-3
    assert errors[0] > errors[1]
