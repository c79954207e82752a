"""First-order hypergradient: Prop. 1 with finite-difference products (METHODS §3).

``L_out`` does not depend on ``φ`` directly, so dropping every second-order term would give exactly
zero. Instead each product of the reverse recurrence is replaced by a central difference of
first-order gradients at ``θ^k ± εv`` with ``ε = R/‖v‖`` (DARTS-style)::

    H_k v   ≈ [∇_θ L_in(θ^k + εv, φ) − ∇_θ L_in(θ^k − εv, φ)] / 2ε
    J_kᵀ v ≈ [∇_φ L_in(θ^k + εv, φ) − ∇_φ L_in(θ^k − εv, φ)] / 2ε

Two first-order backward passes per inner step and no double backward, so it works with fused
attention kernels (SDPA / flash) that have no second derivative. The error per product is
``O(R²)`` (third derivatives of ``L_in``), so the result converges to the unrolled hypergradient
as ``R → 0`` until floating-point cancellation dominates (keep R ≈ 1e-2 in float32). With a
:class:`~oodpl.core.hypergrad.SeparableInnerLoss` (``φ`` only through features ``a``) the
features are computed once per step by the inner loop, the two evaluations at ``θ^k ± εv``
differentiate ``loss(θ, a)`` w.r.t. ``(θ, a)``, and the difference of the ``a``-gradients is
pulled back to ``φ`` by one first-order vector-Jacobian product of ``features``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from oodpl.core.hypergrad._autodiff import (
    Features,
    SeparableInnerLoss,
    finite_difference_products,
    separable_finite_difference_products,
)
from oodpl.core.hypergrad._common import CheckedInputs, HypergradResult, check_inputs
from oodpl.core.hypergrad._params import Params, check_positive, detach
from oodpl.core.hypergrad.truncated import check_truncate
from oodpl.core.hypergrad.unrolled import ProductFunction, iterative_hypergradient

__all__ = ["first_order_hypergradient"]


def _finite_difference_products(inputs: CheckedInputs, radius: float) -> ProductFunction:
    phi = detach(inputs.phi)
    loss = inputs.inner_loss

    def products(theta: Params, features: Features, batch: Any, v: Params, step: int, hvp: bool):
        del hvp  # both products come from the same two gradient evaluations
        where = f"reverse pass, inner step {step}"
        if isinstance(loss, SeparableInnerLoss) and features is not None:
            return separable_finite_difference_products(
                loss, theta, phi, features, batch, v, radius=radius, where=where
            )
        return finite_difference_products(loss, theta, phi, batch, v, radius=radius, where=where)

    return products


def first_order_hypergradient(
    inner_loss: Callable[[Params, Params, Any], Any],
    outer_loss: Callable[[Params, Any], Any],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    radius: float = 0.01,
    truncate: int | None = None,
) -> HypergradResult:
    """Prop. 1's hypergradient with every ``H v`` / ``J ᵀv`` by central finite differences.

    Args:
        radius: ``R`` in ``ε = R/‖v‖`` (the step length in parameter space).
        truncate: keep only the last ``T`` terms as in :func:`truncated_hypergradient`
            (``None`` = all K steps). ``truncate=1`` is the DARTS / MetaRM one-step lookahead.
    """
    inputs = check_inputs(inner_loss, outer_loss, theta0, phi, inner_batches, lr)
    step_radius = check_positive(radius, "radius")
    steps = len(inputs.inner_batches)
    depth = steps if truncate is None else check_truncate(truncate, steps)
    products = _finite_difference_products(inputs, step_radius)
    result = iterative_hypergradient(inputs, outer_batch, depth, products, "first_order")
    return result
