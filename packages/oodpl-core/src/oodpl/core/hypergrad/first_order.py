"""First-order hypergradient: Prop. 1 with finite-difference products (METHODS §3).

``L_out`` does not depend on ``φ`` directly, so dropping every second-order term would give exactly
zero. Instead each product of the reverse recurrence is replaced by a central difference of
first-order gradients at ``θ^k ± εv`` with ``ε = R/‖v‖`` (DARTS-style)::

    H_k v   ≈ [∇_θ L_in(θ^k + εv, φ) − ∇_θ L_in(θ^k − εv, φ)] / 2ε
    J_kᵀ v ≈ [∇_φ L_in(θ^k + εv, φ) − ∇_φ L_in(θ^k − εv, φ)] / 2ε

Two first-order backward passes per inner step and no double backward, so it works with fused
attention kernels (SDPA / flash) that have no second derivative. The error per product is
``O(R²)`` (third derivatives of ``L_in``), so the result converges to the unrolled hypergradient
as ``R → 0`` until floating-point cancellation (``O(ε_mach/R)``, amplified by the model)
dominates. The best R is model-dependent: in float32, ``R = 1e-2`` gives 5e-4 to 1e-3 relative
error on a pretrained 135M LM (SmolLM2), while random-weight models have noisier gradients and
want ``R ≈ 0.1–0.3``; ``benchmarks/first_order_accuracy.py`` measures it
(``benchmarks/README.md`` §4). With a
:class:`~oodpl.core.hypergrad.SeparableInnerLoss` (``φ`` only through features ``a``) the
features are computed once per step by the inner loop, the two evaluations at ``θ^k ± εv``
differentiate ``loss(θ, a)`` w.r.t. ``(θ, a)``, and the difference of the ``a``-gradients is
pulled back to ``φ`` by one first-order vector-Jacobian product of ``features`` (or, with kept
per-sample feature Jacobians, by the contraction ``Σ_i c_i ∂a_i/∂φ``: no pass through
``features`` in the reverse pass). The earliest reverse step needs ``J ᵀv`` only (its ``H v``
does not enter the result), so its evaluations differentiate w.r.t. ``a`` (or ``φ``) alone: for a
separable loss a forward of the ``θ``-side model without a backward through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from oodpl.core.hypergrad._autodiff import Features, SecondOrderProducts, SeparableInnerLoss
from oodpl.core.hypergrad._common import (
    BaseGradient,
    CheckedInputs,
    HypergradResult,
    Unrolled,
    check_inputs,
)
from oodpl.core.hypergrad._differences import (
    finite_difference_products,
    forward_difference_products,
    separable_finite_difference_products,
)
from oodpl.core.hypergrad._jacobian import Pullback
from oodpl.core.hypergrad._params import Params, check_positive, detach
from oodpl.core.hypergrad.truncated import check_truncate
from oodpl.core.hypergrad.unrolled import ProductFunction, iterative_hypergradient

__all__ = ["SCHEMES", "first_order_hypergradient"]

SCHEMES = ("central", "forward")


class _DifferenceProducts:
    """What both finite-difference schemes hold: ``φ``, the loss, ``R`` and the kept steps'
    Jacobian pull-backs (``c_k -> (∂a_k/∂φ)ᵀ c_k``) taken from the inner loop."""

    def __init__(self, inputs: CheckedInputs, radius: float) -> None:
        self.phi = detach(inputs.phi)
        self.loss = inputs.inner_loss
        self.radius = radius
        self.pullbacks: dict[int, Pullback] = {}

    def prepare(self, unrolled: Unrolled, steps: int) -> None:
        self.pullbacks = unrolled.step_pullbacks(steps)


class _CentralDifferenceProducts(_DifferenceProducts):
    """Central differences at ``θ^k ± εv``."""

    def __call__(
        self, theta: Params, features: Features, batch: Any, v: Params, step: int, hvp: bool
    ) -> SecondOrderProducts:
        where = f"reverse pass, inner step {step}"
        pullback = self.pullbacks.pop(step, None)
        if isinstance(self.loss, SeparableInnerLoss) and features is not None:
            return separable_finite_difference_products(
                self.loss,
                theta,
                self.phi,
                features,
                batch,
                v,
                radius=self.radius,
                pullback=pullback,
                want_hvp=hvp,
                where=where,
            )
        return finite_difference_products(
            self.loss, theta, self.phi, batch, v, radius=self.radius, want_hvp=hvp, where=where
        )


class _ForwardDifferenceProducts(_DifferenceProducts):
    """One-sided differences against the gradients the inner loop computed at each ``θ^k``."""

    unroll_options: ClassVar[dict[str, bool]] = {"keep_gradients": True}

    def __init__(self, inputs: CheckedInputs, radius: float) -> None:
        super().__init__(inputs, radius)
        self.base: dict[int, BaseGradient] = {}

    def prepare(self, unrolled: Unrolled, steps: int) -> None:
        """Also take the kept steps' gradients ``∇L(θ^k)`` (the one-sided differences' base)."""
        super().prepare(unrolled, steps)
        first = steps - len(unrolled.gradients)
        self.base = {first + i: g for i, g in enumerate(unrolled.gradients)}

    def __call__(
        self, theta: Params, features: Features, batch: Any, v: Params, step: int, hvp: bool
    ) -> SecondOrderProducts:
        base = self.base.pop(step)  # freed once used
        return forward_difference_products(
            self.loss,
            theta,
            self.phi,
            batch,
            v,
            base.theta,
            base.side,  # type: ignore[arg-type]
            radius=self.radius,
            features=features if isinstance(self.loss, SeparableInnerLoss) else None,
            pullback=self.pullbacks.pop(step, None),
            want_hvp=hvp,
            where=f"reverse pass, inner step {step}",
        )


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
    scheme: str = "central",
) -> HypergradResult:
    """Prop. 1's hypergradient with every ``H v`` / ``J ᵀv`` by finite differences.

    Args:
        radius: ``R`` in ``ε = R/‖v‖`` (the step length in parameter space).
        truncate: keep only the last ``T`` terms as in :func:`truncated_hypergradient`
            (``None`` = all K steps). ``truncate=1`` is the DARTS / MetaRM one-step lookahead.
        scheme: ``"central"`` (default; gradients at ``θ^k ± εv``, error ``O(R²)``) or
            ``"forward"`` (``[∇L(θ^k + εv) − ∇L(θ^k)]/ε`` with ``∇L(θ^k)`` kept from the inner
            loop: one gradient evaluation per step instead of two, error ``O(R)``, and one more
            LoRA-sized gradient kept per step; measured 5–10× less accurate than central on a
            pretrained LM, for a ~20% cheaper meta-step: ``benchmarks/README.md`` §3–4).
    """
    inputs = check_inputs(inner_loss, outer_loss, theta0, phi, inner_batches, lr)
    step_radius = check_positive(radius, "radius")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    steps = len(inputs.inner_batches)
    depth = steps if truncate is None else check_truncate(truncate, steps)
    products: ProductFunction
    if scheme == "forward":
        products = _ForwardDifferenceProducts(inputs, step_radius)
    else:
        products = _CentralDifferenceProducts(inputs, step_radius)
    result = iterative_hypergradient(inputs, outer_batch, depth, products, "first_order")
    return result
