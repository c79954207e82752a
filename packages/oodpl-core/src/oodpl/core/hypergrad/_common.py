"""Shared pieces of every hypergradient: the result type, input checks, and the inner unroll."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor

from oodpl.core.hypergrad._autodiff import (
    Features,
    InnerLoss,
    OuterLoss,
    SeparableInnerLoss,
    batch_features,
    inner_gradients,
    separable_gradients,
)
from oodpl.core.hypergrad._jacobian import KeptJacobians, Pullback
from oodpl.core.hypergrad._params import (
    Params,
    all_finite,
    check_params,
    check_positive,
    detach,
    norm,
)
from oodpl.core.hypergrad._second_order import StepGraph, separable_step_graph, step_graph


@dataclass(frozen=True)
class HypergradResult:
    """What every hypergradient function returns.

    Attributes:
        grad: ``d L_out(θ^K(φ)) / dφ`` (or its approximation), same keys and shapes as ``phi``.
        theta: the last inner iterate ``θ^K`` (detached).
        inner_losses: ``L_in(θ^k; φ, batch_k)`` for ``k = 0..K-1`` (before each inner step).
        outer_loss: ``L_out(θ^K; outer_batch)``.
        grad_norm: Euclidean norm of ``grad`` over all entries.
        method: the name of the method that produced it.
        details: method-specific diagnostics (e.g. CG iterations and residual).
    """

    grad: Params
    theta: Params
    inner_losses: list[float]
    outer_loss: float
    grad_norm: float
    method: str
    details: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckedInputs:
    inner_loss: InnerLoss
    outer_loss: OuterLoss
    theta0: Params
    phi: Params
    inner_batches: list[Any]
    lr: float


def check_inputs(
    inner_loss: object,
    outer_loss: object,
    theta0: object,
    phi: object,
    inner_batches: object,
    lr: object,
) -> CheckedInputs:
    """Validate the arguments shared by all hypergradient functions (errors name the argument)."""
    if not callable(inner_loss):
        raise TypeError(f"inner_loss must be callable, got {type(inner_loss).__name__}")
    if not callable(outer_loss):
        raise TypeError(f"outer_loss must be callable, got {type(outer_loss).__name__}")
    theta_checked = check_params(theta0, "theta0")
    phi_checked = check_params(phi, "phi")
    if isinstance(inner_batches, (str, bytes, Tensor)) or not isinstance(inner_batches, Iterable):
        raise TypeError(
            "inner_batches must be a sequence of batches (one per inner step), "
            f"got {type(inner_batches).__name__}"
        )
    batches = list(inner_batches)
    if len(batches) < 1:
        raise ValueError("inner_batches must hold at least one batch (K >= 1 inner steps)")
    rate = check_positive(lr, "lr")
    for name, params in (("theta0", theta_checked), ("phi", phi_checked)):
        if not all_finite(params):
            raise ValueError(f"{name} holds non-finite values")
    return CheckedInputs(inner_loss, outer_loss, theta_checked, phi_checked, batches, rate)  # type: ignore[arg-type]


class Unrolled(NamedTuple):
    """The inner steps: ``θ^K``, the last kept iterates, their features, ``L_in(θ^k)``."""

    theta: Params
    iterates: list[Params]
    features: list[Features]
    inner_losses: list[float]
    last_graph: StepGraph | None = None
    gradients: tuple[BaseGradient, ...] = ()
    pullbacks: tuple[Pullback | None, ...] = ()
    details: dict[str, float] = {}  # noqa: RUF012 (never mutated)

    def step_pullbacks(self, steps: int) -> dict[int, Pullback]:
        """The kept steps' Jacobian pull-backs ``c -> (∂a_k/∂φ)ᵀ c`` by inner step ``k``."""
        first = steps - len(self.pullbacks)
        return {first + i: p for i, p in enumerate(self.pullbacks) if p is not None}


class BaseGradient(NamedTuple):
    """``∇_θ L_in(θ^k)`` and the ``φ``-side gradient (``∇_a loss`` of a separable loss, else
    ``∇_φ L_in``) at an inner iterate, kept for one-sided finite differences."""

    theta: Params
    side: Tensor | Params


def unroll(
    inputs: CheckedInputs,
    *,
    keep_last: int = 0,
    last_graph: bool = False,
    keep_gradients: bool = False,
) -> Unrolled:
    """Run the K inner SGD steps ``θ^{k+1} = θ^k − α ∇_θ L_in(θ^k; φ, batch_k)`` without graphs.

    ``iterates`` holds the last ``keep_last`` iterates ``θ^{K-keep_last} .. θ^{K-1}`` (detached;
    LoRA-sized, the only memory that grows with K) and ``inner_losses[k] = L_in(θ^k)``. For a
    :class:`SeparableInnerLoss`, ``a_k = features(φ, batch_k)`` is computed once per step (no
    graph) and the kept steps' ``a_k`` are returned in ``features`` for the reverse pass (one
    small tensor per step); otherwise ``features`` holds ``None``. With ``last_graph`` the last
    step's gradient is taken with ``create_graph=True`` and returned as ``last_graph`` (a
    :class:`StepGraph`) for the reverse pass to reuse: one step's graph, whatever K. With
    ``keep_gradients`` the kept steps' gradients are returned too (:class:`BaseGradient`, one
    more LoRA-sized vector per kept step), the ``φ``-side one from the same backward pass.
    If the loss has a ``feature_jacobian``, the kept steps take ``a_k`` and ``∂a_k/∂φ`` from it
    (no ``features`` call) while ``B · |φ| ≤ |θ|``, and ``pullbacks`` holds the contraction
    ``c -> Σ_i c_i ∂a_{k,i}/∂φ`` per kept step (:mod:`oodpl.core.hypergrad._jacobian`).
    """
    theta = detach(inputs.theta0)
    phi = detach(inputs.phi)
    loss_fn = inputs.inner_loss
    graph: StepGraph | None = None
    separable = isinstance(loss_fn, SeparableInnerLoss)
    maxlen = keep_last if keep_last > 0 else 0
    iterates: deque[Params] = deque(maxlen=maxlen)
    kept_features: deque[Features] = deque(maxlen=maxlen)
    kept_gradients: deque[BaseGradient] = deque(maxlen=maxlen)
    kept_pullbacks: deque[Pullback | None] = deque(maxlen=maxlen)
    jacobians = KeptJacobians(loss_fn, theta, phi)
    first_kept = len(inputs.inner_batches) - max(keep_last, 0)  # no step kept: no Jacobians
    losses: list[float] = []
    for step, batch in enumerate(inputs.inner_batches):
        where = f"inner step {step}"
        features: Features = None
        pullback: Pullback | None = None
        side: Tensor | Params | None = None
        build_graph = last_graph and step == len(inputs.inner_batches) - 1
        if separable and step >= first_kept and jacobians.active:
            features, pullback = jacobians(batch, where=where)
        if separable and features is None and not build_graph:
            features = batch_features(loss_fn, phi, batch, where=where)  # type: ignore[arg-type]
        if build_graph:
            if separable:  # scores the batch once, keeping its Jacobian or graph for J_kᵀ v
                graph = separable_step_graph(
                    loss_fn,  # type: ignore[arg-type]
                    theta,
                    features,
                    batch,
                    phi=phi if features is None else None,
                    pullback=pullback,
                    where=where,
                )
                features = graph.features.detach()  # type: ignore[union-attr]
            else:
                graph = step_graph(loss_fn, theta, phi, batch, where=where)
            loss, grad = graph.loss_value, graph.gradient()
        elif separable:
            loss, grad, side = separable_gradients(
                loss_fn,  # type: ignore[arg-type]
                theta,
                features,  # type: ignore[arg-type]
                batch,
                wrt_features=keep_gradients,
                where=where,
            )
        else:
            grads = inner_gradients(loss_fn, theta, phi, batch, wrt_phi=keep_gradients, where=where)
            loss, grad, side = grads.loss, grads.theta, grads.phi
        if keep_last > 0:
            iterates.append(theta)
            kept_features.append(features)
            kept_pullbacks.append(pullback)
            if keep_gradients:
                assert side is not None
                kept_gradients.append(BaseGradient(grad, side))
        losses.append(loss)
        theta = {k: theta[k] - inputs.lr * grad[k] for k in theta}
        if not all_finite(theta):
            raise FloatingPointError(
                f"inner iterate became non-finite at inner step {step} (lr={inputs.lr}); "
                "lower lr or check inner_loss"
            )
    return Unrolled(
        theta,
        list(iterates),
        list(kept_features),
        losses,
        graph,
        tuple(kept_gradients),
        tuple(kept_pullbacks),
        jacobians.details(),
    )


def make_result(
    grad: Params,
    theta: Params,
    inner_losses: list[float],
    outer_loss: float,
    method: str,
    details: Mapping[str, float] | None = None,
) -> HypergradResult:
    if not all_finite(grad):
        raise FloatingPointError(f"{method} hypergradient is non-finite")
    return HypergradResult(
        grad=grad,
        theta=theta,
        inner_losses=inner_losses,
        outer_loss=outer_loss,
        grad_norm=float(norm(grad)),
        method=method,
        details=dict(details or {}),
    )


HypergradFunction = Callable[..., HypergradResult]
