"""Hessian- and mixed-vector products by finite differences of first-order gradients
(METHODS §3, the first-order hypergradient); built on the primitives of ``_autodiff``."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from oodpl.core.hypergrad._autodiff import (
    InnerLoss,
    SecondOrderProducts,
    SeparableInnerLoss,
    inner_gradients,
    pull_back,
    separable_gradients,
)
from oodpl.core.hypergrad._jacobian import Pullback
from oodpl.core.hypergrad._params import Params, add, detach, norm, zeros_like

__all__ = [
    "finite_difference_products",
    "forward_difference_products",
    "separable_finite_difference_products",
]


def finite_difference_products(
    inner_loss: InnerLoss,
    theta: Params,
    phi: Params,
    batch: Any,
    vector: Params,
    *,
    radius: float,
    want_hvp: bool = True,
    where: str = "",
) -> SecondOrderProducts:
    """``H v`` and ``J ᵀ v`` by a central difference of first-order gradients (METHODS §3).

    With ``ε = R/‖v‖``: ``H v ≈ [∇_θ L(θ+εv) − ∇_θ L(θ−εv)]/2ε`` and
    ``J ᵀ v ≈ [∇_φ L(θ+εv) − ∇_φ L(θ−εv)]/2ε`` (DARTS-style). Only first-order autodiff is
    used, so fused attention kernels without a double backward work. The truncation error is
    ``O(R²)`` (third derivatives of ``L_in``). ``v = 0`` gives exact zeros. ``want_hvp=False``
    (the earliest reverse step, whose ``H v`` does not enter the result) differentiates w.r.t.
    ``φ`` only and returns ``H v = 0``.
    """
    eps = _step_length(vector, radius, where)
    if eps is None:
        return SecondOrderProducts(zeros_like(detach(theta)), zeros_like(detach(phi)))
    plus, minus = (
        inner_gradients(
            inner_loss,
            add(theta, vector, sign * eps),
            phi,
            batch,
            wrt_phi=True,
            wrt_theta=want_hvp,
            where=where,
        )
        for sign in (1.0, -1.0)
    )
    assert plus.phi is not None and minus.phi is not None
    factor = 1.0 / (2.0 * eps)
    hvp = _difference(plus.theta, minus.theta, factor, theta, want_hvp)
    mixed = {k: (plus.phi[k] - minus.phi[k]) * factor for k in phi}
    return SecondOrderProducts(hvp, mixed)


def separable_finite_difference_products(
    inner_loss: SeparableInnerLoss,
    theta: Params,
    phi: Params,
    features: Tensor,
    batch: Any,
    vector: Params,
    *,
    radius: float,
    pullback: Pullback | None = None,
    want_hvp: bool = True,
    where: str = "",
) -> SecondOrderProducts:
    """:func:`finite_difference_products` for a :class:`SeparableInnerLoss`.

    ``H v ≈ [∇_θ loss(θ+εv, a) − ∇_θ loss(θ−εv, a)]/2ε`` and
    ``J ᵀv ≈ (∂a/∂φ)ᵀ [∇_a loss(θ+εv, a) − ∇_a loss(θ−εv, a)]/2ε`` (``ε = R/‖v‖``): the same
    central differences as the generic path (the difference of ``∇_φ`` is linear in the
    cotangent), with ``a`` evaluated once and one vector-Jacobian product of ``features``
    instead of a differentiated ``features`` forward at each of ``θ ± εv`` (or, with
    ``pullback``, a contraction with the kept Jacobian).
    """
    eps = _step_length(vector, radius, where)
    if eps is None:
        return SecondOrderProducts(zeros_like(detach(theta)), zeros_like(detach(phi)))
    (_, plus_theta, plus_a), (_, minus_theta, minus_a) = (
        separable_gradients(
            inner_loss,
            add(theta, vector, sign * eps),
            features,
            batch,
            wrt_features=True,
            wrt_theta=want_hvp,
            where=where,
        )
        for sign in (1.0, -1.0)
    )
    assert plus_a is not None and minus_a is not None
    factor = 1.0 / (2.0 * eps)
    hvp = _difference(plus_theta, minus_theta, factor, theta, want_hvp)
    cotangent = (plus_a - minus_a) * factor
    mixed = pull_back(inner_loss, phi, batch, cotangent, pullback, where=where)
    return SecondOrderProducts(hvp, mixed)


def forward_difference_products(
    inner_loss: InnerLoss,
    theta: Params,
    phi: Params,
    batch: Any,
    vector: Params,
    base_theta: Params,
    base_phi: Params,
    *,
    radius: float,
    features: Tensor | None = None,
    pullback: Pullback | None = None,
    want_hvp: bool = True,
    where: str = "",
) -> SecondOrderProducts:
    """``H v`` and ``J ᵀv`` by one-sided differences from gradients already known at ``θ``.

    ``H v ≈ [∇_θ L(θ+εv) − ∇_θ L(θ)]/ε`` and ``J ᵀv ≈ [∇_φ L(θ+εv) − ∇_φ L(θ)]/ε`` with
    ``ε = R/‖v‖``; ``base_theta = ∇_θ L(θ)`` and ``base_phi`` (``∇_φ L(θ)``, or for a
    :class:`SeparableInnerLoss` with ``features`` given, ``∇_a loss(θ, a)``) come from the inner
    loop, so each product costs ONE gradient evaluation (plus, for a separable loss, one
    vector-Jacobian product of ``features``, or the ``pullback`` contraction). Truncation error
    ``O(R)`` (central: ``O(R²)``). ``want_hvp=False``: ``J ᵀv`` only (no backward through the
    ``θ``-side model for a separable loss), ``H v = 0``.
    """
    eps = _step_length(vector, radius, where)
    if eps is None:
        return SecondOrderProducts(zeros_like(detach(theta)), zeros_like(detach(phi)))
    shifted = add(theta, vector, eps)
    if isinstance(inner_loss, SeparableInnerLoss) and features is not None:
        _, plus_theta, plus_a = separable_gradients(
            inner_loss,
            shifted,
            features,
            batch,
            wrt_features=True,
            wrt_theta=want_hvp,
            where=where,
        )
        assert plus_a is not None and isinstance(base_phi, Tensor)
        hvp = _difference(plus_theta, base_theta, 1.0 / eps, theta, want_hvp)
        cotangent = (plus_a - base_phi) / eps
        mixed = pull_back(inner_loss, phi, batch, cotangent, pullback, where=where)
        return SecondOrderProducts(hvp, mixed)
    plus = inner_gradients(
        inner_loss, shifted, phi, batch, wrt_phi=True, wrt_theta=want_hvp, where=where
    )
    assert plus.phi is not None
    hvp = _difference(plus.theta, base_theta, 1.0 / eps, theta, want_hvp)
    mixed = {k: (plus.phi[k] - base_phi[k]) / eps for k in phi}
    return SecondOrderProducts(hvp, mixed)


def _step_length(vector: Params, radius: float, where: str) -> float | None:
    """``ε = R/‖v‖``, or None for ``v = 0`` (the products are then exact zeros)."""
    size = float(norm(vector))
    if size == 0.0:
        return None
    if not math.isfinite(size):
        raise FloatingPointError(f"non-finite vector in a finite-difference product ({where})")
    return radius / size


def _difference(plus: Params, minus: Params, factor: float, theta: Params, wanted: bool) -> Params:
    """``(plus − minus)·factor`` per entry, or zeros shaped like ``θ`` when not ``wanted``."""
    if not wanted:
        return zeros_like(detach(theta))
    return {k: (plus[k] - minus[k]) * factor for k in theta}
