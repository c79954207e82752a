"""Tests for oodpl.core.moo (MORE min-norm reweighting, METHODS §5).

Independent references: a dense 1-D grid for two sources, a fine simplex grid for K = 3, 4, the
Frank–Wolfe duality gap (a certificate of optimality that does not reuse the solver), and the
closed form λ_i ∝ 1/‖g_i‖² for orthogonal gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.moo import (
    GradientMomentum,
    flatten_gradients,
    min_norm_weights,
    more_loss,
    source_gradients,
)

F64 = torch.float64


def objective(weights: torch.Tensor, grads: torch.Tensor) -> float:
    """‖Σ_i λ_i g_i‖², computed from the vectors (not the Gram matrix)."""
    return float((weights.to(F64) @ grads.to(F64)).pow(2).sum())


def simplex_grid(n_sources: int, n_steps: int) -> torch.Tensor:
    """All points of the simplex with coordinates in {0, 1/n, ..., 1}."""
    points: list[list[int]] = []

    def extend(prefix: list[int], remaining: int, left: int) -> None:
        if left == 1:
            points.append([*prefix, remaining])
            return
        for value in range(remaining + 1):
            extend([*prefix, value], remaining - value, left - 1)

    extend([], n_steps, n_sources)
    return torch.tensor(points, dtype=F64) / n_steps


GRIDS = {3: simplex_grid(3, 200), 4: simplex_grid(4, 60)}


def grid_minimum(grads: torch.Tensor) -> float:
    gram = grads @ grads.T
    grid = GRIDS[grads.shape[0]]
    return float(((grid @ gram) * grid).sum(dim=1).min())


def assert_on_simplex(weights: torch.Tensor, n_sources: int) -> None:
    assert weights.shape == (n_sources,)
    assert bool((weights >= 0).all()), weights
    assert math.isclose(float(weights.sum()), 1.0, abs_tol=1e-9)


def gaussian_gradients(seed: int, n_sources: int, dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(n_sources, 1, generator=generator, dtype=F64) * 3 + 0.1
    return torch.randn(n_sources, dim, generator=generator, dtype=F64) * scales


# --------------------------------------------------------------------------- two sources


@pytest.mark.parametrize("seed", range(40))
def test_two_sources_match_dense_line_search(seed: int) -> None:
    dim = 1 + seed % 6
    grads = gaussian_gradients(seed, 2, dim)
    weights = min_norm_weights(grads)
    assert_on_simplex(weights, 2)

    gammas = torch.linspace(0.0, 1.0, 100_001, dtype=F64)
    points = gammas[:, None] * grads[0] + (1 - gammas[:, None]) * grads[1]
    values = points.pow(2).sum(dim=1)
    best = int(values.argmin())
    assert objective(weights, grads) <= float(values[best]) + 1e-12
    # the minimiser is unique unless g_1 = g_2: γ must sit within one grid step of the grid argmin
    assert abs(float(weights[0]) - float(gammas[best])) <= 2e-5


def test_two_sources_clipped_to_a_vertex() -> None:
    # g_1 is the shorter vector and lies on the same ray as g_2: the min-norm point is g_1 itself
    grads = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)
    assert torch.equal(min_norm_weights(grads), torch.tensor([1.0, 0.0], dtype=F64))
    assert torch.equal(min_norm_weights(grads.flip(0)), torch.tensor([0.0, 1.0], dtype=F64))


def test_two_sources_opposite_vectors_cancel() -> None:
    grads = torch.tensor([[3.0, 0.0], [-1.0, 0.0]], dtype=F64)
    weights = min_norm_weights(grads)
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75], dtype=F64))
    assert objective(weights, grads) == pytest.approx(0.0, abs=1e-24)


@pytest.mark.parametrize("row", [[0.0, 0.0, 0.0], [1.5, -2.0, 0.5]])
def test_two_equal_sources_give_uniform_weights(row: list[float]) -> None:
    grads = torch.tensor([row, row], dtype=F64)
    weights = min_norm_weights(grads)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=F64))


def test_single_source_gets_all_the_weight() -> None:
    assert torch.equal(min_norm_weights(torch.randn(1, 5)), torch.ones(1))


# --------------------------------------------------------------------------- K > 2


@pytest.mark.parametrize("n_sources", [3, 4])
@pytest.mark.parametrize("seed", range(25))
def test_frank_wolfe_no_worse_than_simplex_grid_vertices_and_pairs(
    n_sources: int, seed: int
) -> None:
    dim = [1, 2, 3, 5, 16][seed % 5]
    grads = gaussian_gradients(1000 * n_sources + seed, n_sources, dim)
    weights = min_norm_weights(grads)
    assert_on_simplex(weights, n_sources)
    value = objective(weights, grads)
    scale = float(grads.pow(2).sum(dim=1).max())

    # vertices and pairs (each pair by a dense 1-D grid, independent of the closed form)
    assert value <= float(grads.pow(2).sum(dim=1).min()) + 1e-12 * scale
    gammas = torch.linspace(0.0, 1.0, 20_001, dtype=F64)[:, None]
    for i in range(n_sources):
        for j in range(i + 1, n_sources):
            pair = (gammas * grads[i] + (1 - gammas) * grads[j]).pow(2).sum(dim=1).min()
            assert value <= float(pair) + 1e-9 * scale
    # fine simplex grid: plain Frank–Wolfe (1,000 steps) reaches the grid's value closely
    assert value <= grid_minimum(grads) + 2e-4 * scale
    # and with more steps it matches the grid far more tightly
    precise = min_norm_weights(grads, tol=1e-12, max_iter=20_000)
    assert objective(precise, grads) <= grid_minimum(grads) + 1e-6 * scale


@pytest.mark.parametrize("seed", range(20))
def test_frank_wolfe_duality_gap_certifies_optimality(seed: int) -> None:
    """f(λ) − f* ≤ λᵀVλ − min_i (Vλ)_i (half the Frank–Wolfe gap of λᵀVλ)."""
    n_sources = 3 + seed % 5
    grads = gaussian_gradients(seed, n_sources, 2 + seed % 7)
    weights = min_norm_weights(grads, tol=1e-12, max_iter=20_000)
    gram = grads @ grads.T
    gap = float(weights @ gram @ weights - (gram @ weights).min())
    assert gap <= 1e-5 * float(gram.diagonal().max())
    # min-norm point d = Σ λ_i g_i is a common descent direction: ⟨g_i, d⟩ ≥ ‖d‖² − gap
    direction = weights @ grads
    inner = grads @ direction
    assert bool((inner >= direction.pow(2).sum() - gap - 1e-12).all())


def test_min_norm_point_zero_when_origin_in_hull() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    weights = min_norm_weights(grads, tol=1e-12, max_iter=20_000)
    assert objective(weights, grads) < 1e-8
    torch.testing.assert_close(
        weights, torch.tensor([0.5, 0.25, 0.25], dtype=F64), atol=1e-4, rtol=0
    )


def test_max_iter_one_still_returns_a_point_no_worse_than_the_best_pair() -> None:
    grads = gaussian_gradients(7, 5, 3)
    weights = min_norm_weights(grads, max_iter=1)
    assert_on_simplex(weights, 5)
    gram = grads @ grads.T
    best_pair = math.inf
    gammas = torch.linspace(0, 1, 20_001, dtype=F64)
    for i in range(5):
        for j in range(i + 1, 5):
            values = gammas**2 * gram[i, i] + 2 * gammas * (1 - gammas) * gram[i, j]
            values = values + (1 - gammas) ** 2 * gram[j, j]
            best_pair = min(best_pair, float(values.min()))
    assert objective(weights, grads) <= best_pair + 1e-9


def test_dtype_and_device_follow_the_input() -> None:
    weights = min_norm_weights(torch.randn(3, 4, dtype=torch.float32))
    assert weights.dtype == torch.float32
    assert weights.device.type == "cpu"
    assert min_norm_weights(torch.tensor([[1, 0], [0, 1]])).dtype == F64


def test_gradients_are_not_differentiated_through() -> None:
    grads = torch.randn(3, 4, requires_grad=True)
    assert not min_norm_weights(grads).requires_grad


# --------------------------------------------------------------------------- properties

small_gradients = st.integers(min_value=2, max_value=5).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.integers(min_value=1, max_value=6),
        st.integers(min_value=0, max_value=2**31 - 1),
    )
)


@settings(max_examples=60, deadline=None)
@given(spec=small_gradients, permutation_seed=st.integers(0, 10_000))
def test_objective_value_is_permutation_invariant(
    spec: tuple[int, int, int], permutation_seed: int
) -> None:
    n_sources, dim, seed = spec
    grads = gaussian_gradients(seed, n_sources, dim)
    order = torch.randperm(n_sources, generator=torch.Generator().manual_seed(permutation_seed))
    weights = min_norm_weights(grads, tol=1e-12, max_iter=5000)
    permuted = min_norm_weights(grads[order], tol=1e-12, max_iter=5000)
    scale = float(grads.pow(2).sum(dim=1).max())
    assert objective(permuted, grads[order]) == pytest.approx(
        objective(weights, grads), abs=1e-5 * scale
    )


@settings(max_examples=60, deadline=None)
@given(spec=small_gradients, exponent=st.integers(-20, 20), factor=st.floats(1e-3, 1e3))
def test_weights_are_scale_invariant(
    spec: tuple[int, int, int], exponent: int, factor: float
) -> None:
    n_sources, dim, seed = spec
    grads = gaussian_gradients(seed, n_sources, dim)
    weights = min_norm_weights(grads)
    # a power-of-two scale is exact in floating point: the solver must return identical weights
    torch.testing.assert_close(min_norm_weights(grads * 2.0**exponent), weights, atol=1e-12, rtol=0)
    # any positive scale: same optimum value up to solver accuracy
    rescaled = min_norm_weights(grads * factor)
    scale = float(grads.pow(2).sum(dim=1).max())
    assert objective(rescaled, grads) == pytest.approx(objective(weights, grads), abs=2e-4 * scale)


@settings(max_examples=60, deadline=None)
@given(
    n_sources=st.integers(2, 6),
    extra_dims=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_orthogonal_gradients_weighted_by_inverse_squared_norm(
    n_sources: int, extra_dims: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    dim = n_sources + extra_dims
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=F64))
    norms = torch.exp(torch.empty(n_sources, dtype=F64).uniform_(-1.5, 1.5, generator=generator))
    grads = basis[:n_sources] * norms[:, None]
    expected = norms.pow(-2) / norms.pow(-2).sum()
    torch.testing.assert_close(min_norm_weights(grads), expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bad",
    [
        torch.empty(0, 3),
        torch.empty(2, 0),
        torch.ones(3),
        torch.ones(2, 2, 2),
        torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
        torch.tensor([[1.0, float("inf")], [0.0, 1.0]]),
    ],
)
def test_bad_gradients_raise_value_error_naming_the_argument(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="gradients"):
        min_norm_weights(bad)


def test_non_tensor_or_bool_gradients_raise_type_error() -> None:
    with pytest.raises(TypeError, match="gradients"):
        min_norm_weights([[1.0, 0.0], [0.0, 1.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="gradients"):
        min_norm_weights(torch.ones(2, 2, dtype=torch.bool))


def test_overflowing_gram_matrix_is_reported() -> None:
    with pytest.raises(ValueError, match="gradients"):
        min_norm_weights(torch.full((3, 2), 1e200, dtype=F64))


@pytest.mark.parametrize("tol", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_tol(tol: float) -> None:
    with pytest.raises(ValueError, match="tol"):
        min_norm_weights(torch.eye(3), tol=tol)


@pytest.mark.parametrize("max_iter", [0, -5])
def test_bad_max_iter(max_iter: int) -> None:
    with pytest.raises(ValueError, match="max_iter"):
        min_norm_weights(torch.eye(3), max_iter=max_iter)
    with pytest.raises(TypeError, match="max_iter"):
        min_norm_weights(torch.eye(3), max_iter=10.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- momentum


def hand_momentum(steps: list[list[list[float]]], a: float, normalize: bool) -> list[list[float]]:
    """The update rule written element by element in plain Python."""
    n_sources, dim = len(steps[0]), len(steps[0][0])
    buffer = [[0.0] * dim for _ in range(n_sources)]
    for grads in steps:
        buffer = [
            [(1 - a) * buffer[i][d] + a * grads[i][d] for d in range(dim)] for i in range(n_sources)
        ]
    if not normalize:
        return buffer
    out = []
    for row in buffer:
        norm = math.sqrt(sum(x * x for x in row))
        out.append([x / norm if norm > 0 else 0.0 for x in row])
    return out


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_momentum_matches_hand_loop(normalize: bool, momentum: float) -> None:
    generator = torch.Generator().manual_seed(3)
    steps = [torch.randn(3, 4, generator=generator, dtype=F64) for _ in range(6)]
    tracker = GradientMomentum(3, momentum=momentum, normalize=normalize)
    for t, grads in enumerate(steps, start=1):
        result = tracker.update(grads)
        expected = hand_momentum([s.tolist() for s in steps[:t]], momentum, normalize)
        torch.testing.assert_close(result, torch.tensor(expected, dtype=F64))
    assert tracker.n_updates == 6
    assert tracker.dim == 4


def test_momentum_one_without_normalisation_returns_current_gradients() -> None:
    tracker = GradientMomentum(2, dim=3, momentum=1.0, normalize=False)
    tracker.update(torch.ones(2, 3))
    current = torch.randn(2, 3)
    torch.testing.assert_close(tracker.update(current), current)


def test_momentum_zero_gradient_row_stays_zero_without_nan() -> None:
    tracker = GradientMomentum(2, momentum=0.5)
    grads = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    result = tracker.update(grads)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, torch.tensor([[0.0, 0.0], [0.6, 0.8]]))


def test_momentum_buffer_is_unnormalised_and_reset_clears_it() -> None:
    tracker = GradientMomentum(1, momentum=0.5)
    assert tracker.buffer is None
    tracker.update(torch.tensor([[4.0, 0.0]]))
    torch.testing.assert_close(tracker.buffer, torch.tensor([[2.0, 0.0]]))
    tracker.reset()
    assert tracker.buffer is None and tracker.n_updates == 0


def test_momentum_output_does_not_alias_the_buffer() -> None:
    tracker = GradientMomentum(1, momentum=1.0, normalize=False)
    out = tracker.update(torch.tensor([[1.0, 2.0]]))
    out.zero_()
    torch.testing.assert_close(tracker.buffer, torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize("momentum", [0.0, -0.1, 1.5, float("nan")])
def test_momentum_out_of_range(momentum: float) -> None:
    with pytest.raises(ValueError, match="momentum"):
        GradientMomentum(2, momentum=momentum)


def test_momentum_argument_validation() -> None:
    with pytest.raises(ValueError, match="n_sources"):
        GradientMomentum(0)
    with pytest.raises(ValueError, match="dim"):
        GradientMomentum(2, dim=0)
    tracker = GradientMomentum(2, dim=3)
    with pytest.raises(ValueError, match="n_sources"):
        tracker.update(torch.ones(3, 3))
    with pytest.raises(ValueError, match="dim"):
        tracker.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match="gradients"):
        tracker.update(torch.tensor([[1.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]))


# --------------------------------------------------------------------------- more_loss


def test_more_loss_value_and_gradients() -> None:
    theta = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    losses = torch.stack([theta[0] ** 2, (theta[1] - 1) ** 2, theta.sum().exp()])
    weights = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    loss = more_loss(losses, weights)
    assert float(loss.detach()) == pytest.approx(float((weights * losses).sum().detach()))
    loss.backward()
    # λ is a constant of the backward pass
    assert weights.grad is None
    expected = torch.autograd.functional.jacobian(
        lambda t: torch.stack([t[0] ** 2, (t[1] - 1) ** 2, t.sum().exp()]), theta.detach()
    )
    torch.testing.assert_close(theta.grad, weights.detach() @ expected)


def test_more_loss_weights_from_solver_have_no_graph() -> None:
    grads = torch.randn(2, 3, requires_grad=True)
    weights = min_norm_weights(grads)
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    more_loss(losses, weights).backward()
    torch.testing.assert_close(losses.grad, weights)
    assert grads.grad is None


def test_more_loss_validation() -> None:
    with pytest.raises(ValueError, match="weights"):
        more_loss(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="weights"):
        more_loss(torch.ones(2), torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="per_source_losses"):
        more_loss(torch.tensor([1.0, float("nan")]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="weights"):
        more_loss(torch.ones(2), torch.tensor([float("inf"), 0.0]))


# --------------------------------------------------------------------------- helpers


def test_flatten_gradients_from_tensors_and_mappings() -> None:
    a = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([3.0])}
    b = {"bias": torch.tensor([6.0]), "weight": torch.tensor([[4.0, 5.0]])}
    torch.testing.assert_close(
        flatten_gradients([a, b]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    )
    stacked = flatten_gradients([torch.ones(2, 2), torch.zeros(4, dtype=F64)])
    assert stacked.shape == (2, 4) and stacked.dtype == F64


def test_flatten_gradients_validation() -> None:
    with pytest.raises(ValueError, match="gradients"):
        flatten_gradients([])
    with pytest.raises(TypeError, match="gradients"):
        flatten_gradients(torch.ones(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gradients\[1\]"):
        flatten_gradients([torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match=r"gradients\[1\]"):
        flatten_gradients([{"w": torch.ones(2)}, {"v": torch.ones(2)}])
    with pytest.raises(ValueError, match=r"gradients\[1\]\['w'\]"):
        flatten_gradients([{"w": torch.ones(2)}, {"w": torch.ones(1, 2)}])
    with pytest.raises(TypeError, match=r"gradients\[1\]"):
        flatten_gradients([torch.ones(2), {"w": torch.ones(2)}])
    with pytest.raises(ValueError, match="gradients"):
        flatten_gradients([torch.tensor([1.0, float("nan")]), torch.ones(2)])


def test_source_gradients_match_closed_form_of_a_linear_head() -> None:
    """L_i = mean_b softplus(−w·(x_b^w − x_b^l) − c): ∇_w L_i = −mean σ(−h)(x^w − x^l)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, generator=generator, dtype=F64, requires_grad=True)
    bias = torch.zeros((), dtype=F64, requires_grad=True)
    diffs = torch.randn(3, 5, 4, generator=generator, dtype=F64)  # K=3 sources, b=5 pairs
    margins = diffs @ weight  # the bias cancels in r_w − r_l
    losses = torch.nn.functional.softplus(-margins).mean(dim=1) + 0 * bias
    grads = source_gradients(losses, [weight, bias])
    sig = torch.sigmoid(-margins.detach())
    expected_weight = -(sig[..., None] * diffs).mean(dim=1)
    torch.testing.assert_close(grads[:, :4], expected_weight)
    torch.testing.assert_close(grads[:, 4], torch.zeros(3, dtype=F64))
    # the graph is kept: the caller can still backpropagate the weighted loss
    more_loss(losses, min_norm_weights(grads)).backward()
    assert weight.grad is not None


def test_source_gradients_unused_parameter_contributes_zeros_and_validation() -> None:
    used = torch.ones(2, requires_grad=True)
    unused = torch.ones(3, requires_grad=True)
    losses = torch.stack([used.sum(), 2 * used.sum()])
    torch.testing.assert_close(
        source_gradients(losses, [used, unused]),
        torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0, 0.0]]),
    )
    with pytest.raises(ValueError, match="parameters"):
        source_gradients(losses, [])
    with pytest.raises(ValueError, match=r"parameters\[0\]"):
        source_gradients(losses, [torch.ones(2)])
    with pytest.raises(TypeError, match=r"parameters\[0\]"):
        source_gradients(losses, [1.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="per_source_losses"):
        source_gradients(torch.ones(2), [used])
