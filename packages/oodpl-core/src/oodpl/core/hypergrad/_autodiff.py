"""The first-order derivative primitives every hypergradient is assembled from (METHODS §3).

All functions take the *pure* callables of the contract,
``inner_loss(theta, phi, batch) -> scalar`` and ``outer_loss(theta, batch) -> scalar``, evaluate
them on fresh leaf copies of the parameter dicts, and return detached results. Each call builds at
most one step's first-order graph and keeps the models' own (fused) attention kernels; the
double-backward products, the only place with ``create_graph=True`` and SDPA's math kernel, are
in :mod:`oodpl.core.hypergrad._second_order`. Memory does not grow with the number of inner
steps. Parameters a loss does not use get an exact zero gradient instead of ``None``. Also here:
:class:`SeparableInnerLoss` (``φ`` only through per-batch features ``a = f(φ, batch)``) and its
feature primitives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from oodpl.core.hypergrad._jacobian import FeatureJacobian, Pullback
from oodpl.core.hypergrad._params import Params, detach, leaf_copy

InnerLoss = Callable[[Params, Params, Any], Tensor]
Features = Tensor | None  # a_k of a SeparableInnerLoss (None for a plain inner loss)
OuterLoss = Callable[[Params, Any], Tensor]


class InnerGradients(NamedTuple):
    loss: float
    theta: Params
    phi: Params | None


class SeparableInnerLoss:
    """An inner loss in which ``φ`` enters only through per-batch features (METHODS §3)::

        L_in(θ, φ; batch) = loss(θ, a, batch),   a = features(φ, batch)   (a Tensor)

    e.g. [OODPL] Eq. 10: ``a = r_φ(x, y)`` (the reward model's scores of the support batch) and
    ``loss`` the reward-weighted regression of the policy. Calling it is the plain
    ``inner_loss(θ, φ, batch)`` of the contract, so every method accepts it; the iterative methods
    (unrolled, truncated, first-order) use the split by the chain rule::

        J_kᵀ v = ∇_φ <∇_θ L_in(θ^k, φ), v> = (∂a_k/∂φ)ᵀ c_k,   c_k = ∂_a <∇_θ loss(θ^k, a_k), v>

    ``a_k`` is computed once per inner batch without a graph (the inner steps and the reverse
    pass reuse it; ``φ`` is constant during one hypergradient), ``H_k v`` and ``c_k`` come from
    derivatives of ``loss`` w.r.t. ``(θ, a)`` only, and ``c_k`` is pulled back to ``φ`` by one
    first-order vector-Jacobian product of ``features`` per step. The finite-difference method
    thus evaluates ``features`` once per step instead of at both ``θ ± εv``.

    With ``feature_jacobian(φ, batch) -> (a, {name: ∂a/∂φ})`` (per-sample Jacobians
    ``[B, *φ[name].shape]``, or ``None`` to decline) the kept inner steps compute ``a_k`` and
    ``∂a_k/∂φ`` together and ``J_kᵀ v = Σ_i c_{k,i} ∂a_{k,i}/∂φ`` is a contraction, with no pass
    through ``features`` in the reverse pass (:mod:`oodpl.core.hypergrad._jacobian`; used while
    ``B · |φ| ≤ |θ|``, reported in ``HypergradResult.details["feature_jacobian_steps"]``).
    """

    def __init__(
        self,
        features: Callable[[Params, Any], Tensor],
        loss: Callable[[Params, Tensor, Any], Tensor],
        *,
        feature_jacobian: FeatureJacobian | None = None,
    ) -> None:
        if not callable(features):
            raise TypeError(f"features must be callable, got {type(features).__name__}")
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        if feature_jacobian is not None and not callable(feature_jacobian):
            kind = type(feature_jacobian).__name__
            raise TypeError(f"feature_jacobian must be callable or None, got {kind}")
        self.features = features
        self.loss = loss
        self.feature_jacobian = feature_jacobian

    def __call__(self, theta: Params, phi: Params, batch: Any) -> Tensor:
        return self.loss(theta, self.features(phi, batch), batch)


class SecondOrderProducts(NamedTuple):
    """``hvp = H v`` with ``H = ∇²_θθ L_in`` and ``mixed = J ᵀ v = ∇_φ <∇_θ L_in, v>``."""

    hvp: Params
    mixed: Params


def scalar_loss(value: object, name: str, where: str) -> Tensor:
    """Check that a loss callable returned a finite scalar tensor; name the culprit otherwise."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(value).__name__} ({where})")
    if value.numel() != 1:
        raise ValueError(
            f"{name} must return a scalar, got a tensor of shape {tuple(value.shape)} ({where})"
        )
    if not bool(torch.isfinite(value.detach()).all()):
        raise FloatingPointError(f"{name} returned a non-finite value {value.item()} ({where})")
    return value.reshape(())


def _grads(output: Tensor, inputs: list[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    """``∂output/∂inputs`` with exact zeros for inputs the output does not depend on."""
    if not inputs:
        return []
    if not output.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _split(grads: list[Tensor], first: Params, second: Params) -> tuple[Params, Params]:
    """Split a flat gradient list back into two dicts (keys of ``first`` then ``second``)."""
    n = len(first)
    a = {k: g.detach() for k, g in zip(first, grads[:n], strict=True)}
    b = {k: g.detach() for k, g in zip(second, grads[n:], strict=True)}
    return a, b


def inner_gradients(
    inner_loss: InnerLoss,
    theta: Params,
    phi: Params,
    batch: Any,
    *,
    wrt_phi: bool = False,
    wrt_theta: bool = True,
    where: str = "",
) -> InnerGradients:
    """``L_in(θ, φ)``, ``∇_θ L_in`` and (if ``wrt_phi``) ``∇_φ L_in`` from one backward pass.

    ``wrt_theta=False`` (with ``wrt_phi``) leaves ``θ`` out of the graph: the backward pass runs
    only through what ``φ`` touches, and ``∇_θ`` is returned as ``{}``."""
    if not (wrt_theta or wrt_phi):
        raise ValueError("inner_gradients needs wrt_theta or wrt_phi")
    with torch.enable_grad():
        th = leaf_copy(theta) if wrt_theta else detach(theta)
        ph = leaf_copy(phi) if wrt_phi else detach(phi)
        loss = scalar_loss(inner_loss(th, ph, batch), "inner_loss", where)
        first = th if wrt_theta else {}
        wanted = list(first.values()) + (list(ph.values()) if wrt_phi else [])
        g_theta, g_phi = _split(_grads(loss, wanted), first, ph if wrt_phi else {})
    return InnerGradients(float(loss.detach()), g_theta, g_phi if wrt_phi else None)


def outer_gradient(
    outer_loss: OuterLoss, theta: Params, batch: Any, *, where: str = ""
) -> tuple[float, Params]:
    """``L_out(θ)`` and ``∇_θ L_out(θ)``."""
    with torch.enable_grad():
        th = leaf_copy(theta)
        loss = scalar_loss(outer_loss(th, batch), "outer_loss", where)
        grad, _ = _split(_grads(loss, list(th.values())), th, {})
    return float(loss.detach()), grad


# --- separable inner losses (φ only through features a = f(φ, batch)) --------------------------


def batch_features(
    inner_loss: SeparableInnerLoss, phi: Params, batch: Any, *, where: str = ""
) -> Tensor:
    """``a = features(φ, batch)`` without a graph (``φ`` is a constant of the inner steps)."""
    with torch.no_grad():
        value = inner_loss.features(detach(phi), batch)
    return _checked_features(value, where).detach()


def _checked_features(value: object, where: str) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        kind = type(value).__name__ if not isinstance(value, Tensor) else str(value.dtype)
        raise TypeError(f"features must return a floating-point torch.Tensor, got {kind} ({where})")
    if not bool(torch.isfinite(value.detach()).all()):
        raise FloatingPointError(f"features returned non-finite values ({where})")
    return value


def separable_gradients(
    inner_loss: SeparableInnerLoss,
    theta: Params,
    features: Tensor,
    batch: Any,
    *,
    wrt_features: bool = False,
    wrt_theta: bool = True,
    where: str = "",
) -> tuple[float, Params, Tensor | None]:
    """``loss(θ, a)``, ``∇_θ loss`` and (if ``wrt_features``) ``∇_a loss``: one backward pass.

    ``wrt_theta=False`` (with ``wrt_features``) keeps ``θ`` out of the graph: the model's forward
    runs without recording, only the few operations that use ``a`` are differentiated (no
    backward through the model), and ``∇_θ`` is returned as ``{}``."""
    if not (wrt_theta or wrt_features):
        raise ValueError("separable_gradients needs wrt_theta or wrt_features")
    with torch.enable_grad():
        th = leaf_copy(theta) if wrt_theta else detach(theta)
        a = features.detach().requires_grad_(wrt_features)
        loss = scalar_loss(inner_loss.loss(th, a, batch), "inner_loss", where)
        first = th if wrt_theta else {}
        grads = _grads(loss, [*first.values(), *([a] if wrt_features else [])])
    g_theta = {k: g.detach() for k, g in zip(first, grads, strict=False)}
    return float(loss.detach()), g_theta, grads[-1].detach() if wrt_features else None


def features_vjp(
    inner_loss: SeparableInnerLoss,
    phi: Params,
    batch: Any,
    cotangent: Tensor,
    *,
    where: str = "",
) -> Params:
    """``(∂a/∂φ)ᵀ c`` with ``a = features(φ, batch)``: one forward and backward of ``features``."""
    with torch.enable_grad():
        ph = leaf_copy(phi)
        value = inner_loss.features(ph, batch)
        if not isinstance(value, Tensor) or value.shape != cotangent.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"features returned {shape}, expected shape {tuple(cotangent.shape)} "
                f"as in the inner steps ({where})"
            )
    return _graph_pullback(value, ph)(cotangent)


def pull_back(
    inner_loss: SeparableInnerLoss,
    phi: Params,
    batch: Any,
    cotangent: Tensor,
    pullback: Pullback | None,
    *,
    where: str = "",
) -> Params:
    """``(∂a/∂φ)ᵀ c`` by ``pullback`` (a kept Jacobian or feature graph) if given, else by
    :func:`features_vjp`."""
    if pullback is not None:
        return pullback(cotangent)
    return features_vjp(inner_loss, phi, batch, cotangent, where=where)


def _graph_pullback(value: Tensor, leaves: Params) -> Pullback:
    """``c -> ∇_φ Σ_i c_i a_i`` through the graph of ``a = features(φ)`` kept from the forward."""

    def pullback(cotangent: Tensor) -> Params:
        with torch.enable_grad():
            total = torch.sum(value * cotangent.detach().to(value.dtype))
            mixed, _ = _split(_grads(total, list(leaves.values())), leaves, {})
        return mixed

    return pullback
