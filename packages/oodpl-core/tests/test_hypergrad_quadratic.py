"""Hypergradients on a quadratic inner problem, against closed forms (acceptance item 4, part 1).

Inner objective at step k (batch k): ``L_in = ½ θᵀA_kθ − θᵀ(B_k φ + c_k)`` with SPD ``A_k``, so one
SGD step is affine, ``θ^{k+1} = (I − αA_k)θ^k + α(B_kφ + c_k)``, and the Jacobian of the K-step
map follows the forward recursion ``D_0 = 0, D_{k+1} = (I − αA_k) D_k + αB_k``. The exact
derivative of the unrolled computation is ``D_Kᵀ ∇L_out(θ^K)``. With a fixed ``(A, B, c)`` the
inner solution is ``θ* = A⁻¹(Bφ + c)`` and the total derivative is ``Bᵀ A⁻¹ ∇L_out(θ*)``.
Parameters are dicts of differently shaped tensors (matrices, vectors, an unused ``phi`` entry) and
are flattened here by hand, independently of the library's helpers.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from oodpl.core.hypergrad import (
    first_order_hypergradient,
    hypergradient,
    implicit_hypergradient,
    truncated_hypergradient,
    unrolled_hypergradient,
)

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads; on a loaded machine they cost 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


THETA_SHAPES = {"W": (2, 3), "b": (4,)}  # n = 10
PHI_SHAPES = {"u": (3,), "M": (2, 2)}  # m = 7 live entries (+ an unused one)
N_THETA = 10
N_PHI = 7


def flat(params: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> torch.Tensor:
    return torch.cat([params[k].reshape(-1) for k in shapes])


def unflat(vector: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for key, shape in shapes.items():
        size = int(torch.tensor(shape).prod())
        out[key] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out


def random_spd(n: int, gen: torch.Generator, low: float = 0.5, high: float = 2.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    eig = low + (high - low) * torch.rand(n, generator=gen, dtype=DT)
    return q @ torch.diag(eig) @ q.T


def make_problem(seed: int, steps: int, *, fixed: bool = False):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        if fixed and batches:
            batches.append(batches[0])
            continue
        a = random_spd(N_THETA, gen)
        b = torch.randn(N_THETA, N_PHI, generator=gen, dtype=DT)
        c = torch.randn(N_THETA, generator=gen, dtype=DT)
        batches.append((a, b, c))
    d = torch.randn(3, N_THETA, generator=gen, dtype=DT)
    target = torch.randn(N_THETA, generator=gen, dtype=DT)
    theta0 = unflat(torch.randn(N_THETA, generator=gen, dtype=DT), THETA_SHAPES)
    phi = unflat(torch.randn(N_PHI, generator=gen, dtype=DT), PHI_SHAPES)
    phi["unused"] = torch.randn(5, generator=gen, dtype=DT)

    def inner_loss(theta, phi_, batch):
        a, b, c = batch
        t = flat(theta, THETA_SHAPES)
        return 0.5 * t @ a @ t - t @ (b @ flat(phi_, PHI_SHAPES) + c)

    def outer_loss(theta, batch):
        t = flat(theta, THETA_SHAPES)
        return torch.logsumexp(d @ t, 0) + 0.25 * torch.sum((t - target) ** 2)

    def outer_grad(t: torch.Tensor) -> torch.Tensor:
        return d.T @ torch.softmax(d @ t, 0) + 0.5 * (t - target)

    return inner_loss, outer_loss, outer_grad, theta0, phi, batches


def closed_form_unrolled(batches, theta0, phi, lr, outer_grad, first_step=0):
    """θ^K and ``D_Kᵀ ∇L_out(θ^K)`` where D is the Jacobian of θ^K in φ over steps >= first_step."""
    t = flat(theta0, THETA_SHAPES)
    p = flat(phi, PHI_SHAPES)
    jac = torch.zeros(N_THETA, N_PHI, dtype=DT)
    eye = torch.eye(N_THETA, dtype=DT)
    for k, (a, b, c) in enumerate(batches):
        if k >= first_step:
            jac = (eye - lr * a) @ jac + lr * b
        t = (eye - lr * a) @ t + lr * (b @ p + c)
    return t, jac.T @ outer_grad(t)


def as_flat_grad(result) -> torch.Tensor:
    return flat(result.grad, PHI_SHAPES)


@pytest.mark.parametrize(("seed", "steps", "lr"), [(0, 1, 0.3), (1, 7, 0.3), (2, 25, 0.2)])
def test_unrolled_equals_exact_jacobian_of_the_k_step_map(seed, steps, lr):
    inner, outer, outer_grad, theta0, phi, batches = make_problem(seed, steps)
    result = unrolled_hypergradient(inner, outer, theta0, phi, batches, None, lr=lr)
    theta_k, expected = closed_form_unrolled(batches, theta0, phi, lr, outer_grad)
    assert torch.allclose(flat(result.theta, THETA_SHAPES), theta_k, atol=1e-12, rtol=0)
    assert (as_flat_grad(result) - expected).abs().max() < 1e-6
    assert (as_flat_grad(result) - expected).abs().max() < 1e-11  # in fact to round-off
    assert torch.equal(result.grad["unused"], torch.zeros(5, dtype=DT))
    assert result.grad["M"].shape == (2, 2)
    assert result.grad_norm == pytest.approx(float(torch.linalg.norm(expected)), rel=1e-10)
    assert len(result.inner_losses) == steps
    expected_outer = outer(unflat(theta_k, THETA_SHAPES), None)
    assert result.outer_loss == pytest.approx(float(expected_outer), rel=1e-12)


@pytest.mark.parametrize("truncate", [1, 3, 8])
def test_truncated_equals_jacobian_of_the_last_t_steps(truncate):
    inner, outer, outer_grad, theta0, phi, batches = make_problem(3, 8)
    lr = 0.25
    result = truncated_hypergradient(
        inner, outer, theta0, phi, batches, None, lr=lr, truncate=truncate
    )
    _, expected = closed_form_unrolled(batches, theta0, phi, lr, outer_grad, 8 - truncate)
    assert (as_flat_grad(result) - expected).abs().max() < 1e-11


def test_first_order_is_exact_up_to_round_off_on_quadratics():
    """``∇L_in`` is affine in θ, so the central (and one-sided) differences of first-order
    gradients are exact."""
    inner, outer, outer_grad, theta0, phi, batches = make_problem(4, 6)
    _, expected = closed_form_unrolled(batches, theta0, phi, 0.3, outer_grad)
    for radius in (1e-1, 1e-3):
        for scheme in ("central", "forward"):  # forward: one-sided, also exact when affine
            result = first_order_hypergradient(
                inner, outer, theta0, phi, batches, None, lr=0.3, radius=radius, scheme=scheme
            )
            assert (as_flat_grad(result) - expected).abs().max() < 1e-9, scheme


def implicit_closed_form(batch, phi, outer_grad):
    a, b, c = batch
    theta_star = torch.linalg.solve(a, b @ flat(phi, PHI_SHAPES) + c)
    return b.T @ torch.linalg.solve(a, outer_grad(theta_star))


@pytest.mark.parametrize(
    ("method", "options"),
    [("cg", {"terms": 30}), ("neumann", {"terms": 300})],
)
def test_implicit_approaches_closed_form_total_derivative_as_k_grows(method, options):
    inner, outer, outer_grad, theta0, phi, batches = make_problem(5, 1, fixed=True)
    exact = implicit_closed_form(batches[0], phi, outer_grad)
    errors = []
    for steps in (2, 8, 32, 128):
        result = hypergradient(
            inner, outer, theta0, phi, batches * steps, None, lr=0.5, method=method, **options
        )
        errors.append(float(torch.linalg.norm(as_flat_grad(result) - exact)))
    print(f"{method}: |g(θ^K) - closed form| for K = 2, 8, 32, 128:", errors)
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))
    assert errors[0] > 1e-3  # the early iterate is genuinely off the fixed point
    assert errors[-1] < 1e-8 * float(torch.linalg.norm(exact))


def test_neumann_error_decreases_with_terms_at_the_fixed_point():
    inner, outer, outer_grad, theta0, phi, batches = make_problem(6, 1, fixed=True)
    exact = implicit_closed_form(batches[0], phi, outer_grad)
    errors = []
    for terms in (0, 5, 20, 80):
        result = implicit_hypergradient(
            inner, outer, theta0, phi, batches * 200, None, lr=0.5, method="neumann", terms=terms
        )
        errors.append(float(torch.linalg.norm(as_flat_grad(result) - exact)))
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < 1e-6


def test_neumann_equals_unrolled_from_the_fixed_point():
    """At θ^0 = θ* every iterate stays at θ*, so J Neumann terms = J + 1 unrolled steps."""
    inner, outer, _outer_grad, _, phi, batches = make_problem(7, 1, fixed=True)
    a, b, c = batches[0]
    theta_star = unflat(torch.linalg.solve(a, b @ flat(phi, PHI_SHAPES) + c), THETA_SHAPES)
    terms = 6
    neumann = implicit_hypergradient(
        inner, outer, theta_star, phi, batches, None, lr=0.1, method="neumann", terms=terms
    )
    # implicit evaluates at θ^1 = θ* (one inner step from θ*); unrolled takes terms + 1 steps
    many = batches * (terms + 1)
    unrolled = unrolled_hypergradient(inner, outer, theta_star, phi, many, None, lr=0.1)
    assert (as_flat_grad(neumann) - as_flat_grad(unrolled)).abs().max() < 1e-12


def test_cg_with_damping_solves_the_damped_system():
    inner, outer, outer_grad, theta0, phi, batches = make_problem(8, 1, fixed=True)
    a, b, c = batches[0]
    damping = 0.7
    options = {"method": "cg", "terms": 50, "damping": damping}
    result = implicit_hypergradient(
        inner, outer, theta0, phi, batches * 300, None, lr=0.5, **options
    )
    theta_star = torch.linalg.solve(a, b @ flat(phi, PHI_SHAPES) + c)
    eye = torch.eye(N_THETA, dtype=DT)
    expected = b.T @ torch.linalg.solve(a + damping * eye, outer_grad(theta_star))
    assert (as_flat_grad(result) - expected).abs().max() < 1e-9
    assert result.details["cg_relative_residual"] < 1e-9
    assert result.details["hvp_calls"] <= N_THETA + 1  # CG converges in <= n steps
