"""Iterative differentiation through K inner SGD steps ([OODPL] Prop. 1, METHODS §3).

With ``θ^{k+1} = θ^k − α ∇_θ L_in(θ^k, φ; batch_k)``, ``H_k = ∇²_θθ L_in(θ^k, φ)`` and
``J_k = ∇²_φθ L_in(θ^k, φ)``::

    dL_out(θ^K)/dφ = −α Σ_{k=0}^{K−1} J_kᵀ Π_{j=k+1}^{K−1} (I − α H_j) ∇_θ L_out(θ^K)

computed by the reverse recurrence ``v = ∇_θ L_out(θ^K)``, ``g = 0``; for ``k = K−1 … 0``:
``g −= α J_kᵀ v``; ``v −= α H_k v``. Only the (detached) iterates are kept; each step's graph is
rebuilt, used for one Hessian/mixed product, and freed, so memory is
``O(K · |θ|)`` for the iterates plus ONE step's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from oodpl.core.hypergrad._autodiff import (
    SecondOrderProducts,
    outer_gradient,
    second_order_products,
)
from oodpl.core.hypergrad._common import (
    CheckedInputs,
    HypergradResult,
    check_inputs,
    make_result,
    unroll,
)
from oodpl.core.hypergrad._params import Params, detach, zeros_like

__all__ = [
    "exact_products",
    "iterative_hypergradient",
    "reverse_recurrence",
    "unrolled_hypergradient",
]

# products(theta_k, batch_k, v, step, need_hvp) -> (H_k v, J_kᵀ v)
ProductFunction = Callable[[Params, Any, Params, int, bool], SecondOrderProducts]


def exact_products(inputs: CheckedInputs) -> ProductFunction:
    """Exact Hessian- and mixed-vector products by double backward (one step's graph at a time)."""
    phi = detach(inputs.phi)

    def products(theta: Params, batch: Any, v: Params, step: int, need_hvp: bool):
        return second_order_products(
            inputs.inner_loss,
            theta,
            phi,
            batch,
            v,
            want_hvp=need_hvp,
            where=f"reverse pass, inner step {step}",
        )

    return products


def reverse_recurrence(
    products: ProductFunction,
    iterates: Sequence[Params],
    batches: Sequence[Any],
    phi: Params,
    v: Params,
    lr: float,
) -> Params:
    """``g = −α Σ_k J_kᵀ Π_{j>k}(I − αH_j) v`` over the given (last T) iterates.

    ``iterates[i]`` and ``batches[i]`` are step ``k = K − T + i``; ``v`` is ``∇_θ L_out(θ^K)``.
    The last ``H v`` (at the earliest step) is skipped: it does not enter ``g``.
    """
    grad = zeros_like(detach(phi))
    first = len(batches) - len(iterates)
    for i in reversed(range(len(iterates))):
        step = first + i
        prod = products(iterates[i], batches[step], v, step, i > 0)
        grad = {k: grad[k] - lr * prod.mixed[k] for k in grad}
        if i > 0:
            v = {k: v[k] - lr * prod.hvp[k] for k in v}
    return grad


def iterative_hypergradient(
    inputs: CheckedInputs,
    outer_batch: Any,
    truncate: int,
    products: ProductFunction,
    method: str,
) -> HypergradResult:
    theta_k, iterates, inner_losses = unroll(inputs, keep_last=truncate)
    outer_loss, v = outer_gradient(inputs.outer_loss, theta_k, outer_batch, where="at θ^K")
    grad = reverse_recurrence(products, iterates, inputs.inner_batches, inputs.phi, v, inputs.lr)
    details = {"inner_steps": float(len(inputs.inner_batches)), "truncate": float(truncate)}
    return make_result(grad, theta_k, inner_losses, outer_loss, method, details)


def unrolled_hypergradient(
    inner_loss: Callable[[Params, Params, Any], Any],
    outer_loss: Callable[[Params, Any], Any],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
) -> HypergradResult:
    """Exact derivative of ``L_out(θ^K(φ))`` through all K inner SGD steps ([OODPL] Prop. 1).

    ``K = len(inner_batches)``; step ``k`` uses ``inner_batches[k]``; ``lr`` is the inner step
    size α. ``theta0`` is treated as a constant (it is reset to the SFT parameters in Alg. 1).
    """
    inputs = check_inputs(inner_loss, outer_loss, theta0, phi, inner_batches, lr)
    steps = len(inputs.inner_batches)
    return iterative_hypergradient(inputs, outer_batch, steps, exact_products(inputs), "unrolled")
