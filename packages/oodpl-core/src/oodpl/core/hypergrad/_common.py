"""Shared pieces of every hypergradient: the result type, input checks, and the inner unroll."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from oodpl.core.hypergrad._autodiff import InnerLoss, OuterLoss, inner_gradients
from oodpl.core.hypergrad._params import (
    Params,
    all_finite,
    check_params,
    check_positive,
    detach,
    norm,
)


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


def unroll(
    inputs: CheckedInputs, *, keep_last: int = 0
) -> tuple[Params, list[Params], list[float]]:
    """Run the K inner SGD steps ``θ^{k+1} = θ^k − α ∇_θ L_in(θ^k; φ, batch_k)`` without graphs.

    Returns ``(θ^K, iterates, inner_losses)`` where ``iterates`` holds the last ``keep_last``
    iterates ``θ^{K-keep_last} .. θ^{K-1}`` (detached; LoRA-sized, the only memory that grows
    with K) and ``inner_losses[k] = L_in(θ^k)``.
    """
    theta = detach(inputs.theta0)
    phi = detach(inputs.phi)
    iterates: deque[Params] = deque(maxlen=keep_last if keep_last > 0 else 0)
    losses: list[float] = []
    for step, batch in enumerate(inputs.inner_batches):
        if keep_last > 0:
            iterates.append(theta)
        grads = inner_gradients(inputs.inner_loss, theta, phi, batch, where=f"inner step {step}")
        losses.append(grads.loss)
        theta = {k: theta[k] - inputs.lr * grads.theta[k] for k in theta}
        if not all_finite(theta):
            raise FloatingPointError(
                f"inner iterate became non-finite at inner step {step} (lr={inputs.lr}); "
                "lower lr or check inner_loss"
            )
    return theta, list(iterates), losses


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
