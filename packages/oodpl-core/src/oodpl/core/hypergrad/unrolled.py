"""Iterative differentiation through K inner SGD steps ([OODPL] Prop. 1, METHODS §3).

With ``θ^{k+1} = θ^k − α ∇_θ L_in(θ^k, φ; batch_k)``, ``H_k = ∇²_θθ L_in(θ^k, φ)`` and
``J_k = ∇²_φθ L_in(θ^k, φ)``::

    dL_out(θ^K)/dφ = −α Σ_{k=0}^{K−1} J_kᵀ Π_{j=k+1}^{K−1} (I − α H_j) ∇_θ L_out(θ^K)

computed by the reverse recurrence ``v = ∇_θ L_out(θ^K)``, ``g = 0``; for ``k = K−1 … 0``:
``g −= α J_kᵀ v``; ``v −= α H_k v``. Only the (detached) iterates are kept; each step's graph is
rebuilt, used for one Hessian/mixed product, and freed, so memory is
``O(K · |θ|)`` for the iterates plus ONE step's activations. With a
:class:`~oodpl.core.hypergrad._autodiff.SeparableInnerLoss` the features ``a_k`` of the forward
sweep are reused, ``H_k v`` and ``c_k = ∂_a <∇_θ L_in, v>`` come from one double backward over
``(θ, a)``, and ``J_kᵀ v = (∂a_k/∂φ)ᵀ c_k`` from one first-order pass through ``features``, or,
when the loss gives per-sample Jacobians (``feature_jacobian``, kept while ``B·|φ| ≤ |θ|``), by
the contraction ``Σ_i c_{k,i} ∂a_{k,i}/∂φ`` with no pass through ``features`` at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from oodpl.core.hypergrad._autodiff import (
    Features,
    SecondOrderProducts,
    SeparableInnerLoss,
    outer_gradient,
)
from oodpl.core.hypergrad._common import (
    CheckedInputs,
    HypergradResult,
    Unrolled,
    check_inputs,
    make_result,
    unroll,
)
from oodpl.core.hypergrad._jacobian import Pullback
from oodpl.core.hypergrad._params import Params, detach, zeros_like
from oodpl.core.hypergrad._second_order import (
    StepGraph,
    second_order_products,
    separable_second_order_products,
)

__all__ = [
    "ExactProducts",
    "exact_products",
    "iterative_hypergradient",
    "reverse_recurrence",
    "unrolled_hypergradient",
]

# products(theta_k, a_k, batch_k, v, step, need_hvp) -> (H_k v, J_kᵀ v); a_k: the features of a
# SeparableInnerLoss at step k (None otherwise)
ProductFunction = Callable[[Params, Features, Any, Params, int, bool], SecondOrderProducts]


class ExactProducts:
    """Exact Hessian- and mixed-vector products by double backward (one step's graph at a time).

    The last inner step's graph is built by the inner loop itself (``unroll(last_graph=True)``)
    and handed over through :attr:`pending`, so the reverse pass rebuilds only ``T − 1`` steps.
    Kept per-sample feature Jacobians (:attr:`pullbacks`) replace the ``features`` VJP.
    """

    unroll_options: ClassVar[dict[str, bool]] = {"last_graph": True}

    def __init__(self, inputs: CheckedInputs) -> None:
        self.phi = detach(inputs.phi)
        self.loss = inputs.inner_loss
        self.pending: dict[int, StepGraph] = {}
        self.pullbacks: dict[int, Pullback] = {}

    def prepare(self, unrolled: Unrolled, steps: int) -> None:
        if unrolled.last_graph is not None:
            self.pending[steps - 1] = unrolled.last_graph
        self.pullbacks = unrolled.step_pullbacks(steps)

    def __call__(
        self, theta: Params, features: Features, batch: Any, v: Params, step: int, hvp: bool
    ) -> SecondOrderProducts:
        graph = self.pending.pop(step, None)
        pullback = self.pullbacks.pop(step, None)  # freed once used
        if graph is not None:
            return graph.products(v, self.phi, want_hvp=hvp)
        where = f"reverse pass, inner step {step}"
        if isinstance(self.loss, SeparableInnerLoss) and features is not None:
            return separable_second_order_products(
                self.loss,
                theta,
                self.phi,
                features,
                batch,
                v,
                want_hvp=hvp,
                pullback=pullback,
                where=where,
            )
        return second_order_products(
            self.loss, theta, self.phi, batch, v, want_hvp=hvp, where=where
        )


def exact_products(inputs: CheckedInputs) -> ProductFunction:
    """Exact Hessian- and mixed-vector products by double backward (see :class:`ExactProducts`)."""
    return ExactProducts(inputs)


def reverse_recurrence(
    products: ProductFunction,
    iterates: Sequence[Params],
    features: Sequence[Features],
    batches: Sequence[Any],
    phi: Params,
    v: Params,
    lr: float,
) -> Params:
    """``g = −α Σ_k J_kᵀ Π_{j>k}(I − αH_j) v`` over the given (last T) iterates.

    ``iterates[i]`` and ``features[i]`` are step ``k = K − T + i``; ``v`` is ``∇_θ L_out(θ^K)``.
    The last ``H v`` (at the earliest step) is skipped: it does not enter ``g``.
    """
    grad = zeros_like(detach(phi))
    first = len(batches) - len(iterates)
    for i in reversed(range(len(iterates))):
        step = first + i
        prod = products(iterates[i], features[i], batches[step], v, step, i > 0)
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
    """Inner loop, ``∇_θ L_out(θ^K)``, reverse recurrence. A ``products`` object may ask the inner
    loop for more (``unroll_options``, e.g. the last step's graph) and receive it (``prepare``)."""
    unrolled = unroll(inputs, keep_last=truncate, **getattr(products, "unroll_options", {}))
    prepare = getattr(products, "prepare", None)
    if prepare is not None:
        prepare(unrolled, len(inputs.inner_batches))
    theta_k, iterates, features = unrolled.theta, unrolled.iterates, unrolled.features
    inner_losses = unrolled.inner_losses
    details = {"inner_steps": float(len(inputs.inner_batches)), "truncate": float(truncate)}
    details.update(unrolled.details)
    del unrolled
    outer_loss, v = outer_gradient(inputs.outer_loss, theta_k, outer_batch, where="at θ^K")
    batches = inputs.inner_batches
    grad = reverse_recurrence(products, iterates, features, batches, inputs.phi, v, inputs.lr)
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
