"""The derivative primitives every hypergradient is assembled from (METHODS §3).

All functions take the *pure* callables of the contract,
``inner_loss(theta, phi, batch) -> scalar`` and ``outer_loss(theta, batch) -> scalar``, evaluate
them on fresh leaf copies of the parameter dicts, and return detached results. Each call builds at
most one step's graph (``create_graph`` only inside :func:`second_order_products`), so memory does
not grow with the number of inner steps. Parameters a loss does not use get an exact zero
gradient instead of ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from oodpl.core.hypergrad._params import Params, add, detach, dot, leaf_copy, norm, zeros_like

InnerLoss = Callable[[Params, Params, Any], Tensor]
OuterLoss = Callable[[Params, Any], Tensor]


class InnerGradients(NamedTuple):
    loss: float
    theta: Params
    phi: Params | None


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


_ERROR_NODES = frozenset({"torch::autograd::Error", "torch::autograd::DelayedError"})


def _check_twice_differentiable(grads: list[Tensor], where: str) -> None:
    """Raise if the graph of ``grads`` holds a node that cannot be differentiated again.

    A backward marked ``@once_differentiable`` leaves an ``Error`` node whose inputs are cut off,
    so a second ``autograd.grad(..., allow_unused=True)`` would silently return zeros instead of
    failing. The graph walk is cheap (about 1 ms for a 6-layer transformer's gradient graph).
    """
    seen: set[Any] = set()
    stack = [g.grad_fn for g in grads if g.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.name() in _ERROR_NODES:
            raise RuntimeError(
                "inner_loss uses an operation whose backward cannot be differentiated again "
                f"(@once_differentiable, {where}); exact Hessian-vector products are impossible: "
                "use method='first_order' (finite differences of first-order gradients)"
            )
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)


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
    where: str = "",
) -> InnerGradients:
    """``L_in(θ, φ)``, ``∇_θ L_in`` and (if ``wrt_phi``) ``∇_φ L_in`` from one backward pass."""
    with torch.enable_grad():
        th = leaf_copy(theta)
        ph = leaf_copy(phi) if wrt_phi else detach(phi)
        loss = scalar_loss(inner_loss(th, ph, batch), "inner_loss", where)
        wanted = list(th.values()) + (list(ph.values()) if wrt_phi else [])
        g_theta, g_phi = _split(_grads(loss, wanted), th, ph if wrt_phi else {})
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


def second_order_products(
    inner_loss: InnerLoss,
    theta: Params,
    phi: Params,
    batch: Any,
    vector: Params,
    *,
    want_hvp: bool = True,
    want_mixed: bool = True,
    where: str = "",
) -> SecondOrderProducts:
    """Exact ``H v`` and ``J ᵀ v`` at ``(θ, φ)`` by double backward through ONE inner loss.

    ``∇_θ L_in`` is built with ``create_graph=True``; one more backward of ``<∇_θ L_in, v>``
    with respect to ``θ`` and ``φ`` gives both products at once (METHODS §3, Prop. 1).
    Products not requested are returned as zeros without extra work.
    """
    with torch.enable_grad():
        th = leaf_copy(theta)
        ph = leaf_copy(phi) if want_mixed else detach(phi)
        loss = scalar_loss(inner_loss(th, ph, batch), "inner_loss", where)
        g_list = _grads(loss, list(th.values()), create_graph=True)
        _check_twice_differentiable(g_list, where)
        g_theta = dict(zip(th, g_list, strict=True))
        inner = dot(g_theta, {k: v.detach() for k, v in vector.items()})
        first = th if want_hvp else {}
        second = ph if want_mixed else {}
        hvp, mixed = _split(_grads(inner, [*first.values(), *second.values()]), first, second)
    if not want_hvp:
        hvp = zeros_like(detach(theta))
    if not want_mixed:
        mixed = zeros_like(detach(phi))
    return SecondOrderProducts(hvp, mixed)


def finite_difference_products(
    inner_loss: InnerLoss,
    theta: Params,
    phi: Params,
    batch: Any,
    vector: Params,
    *,
    radius: float,
    where: str = "",
) -> SecondOrderProducts:
    """``H v`` and ``J ᵀ v`` by a central difference of first-order gradients (METHODS §3).

    With ``ε = R/‖v‖``: ``H v ≈ [∇_θ L(θ+εv) − ∇_θ L(θ−εv)]/2ε`` and
    ``J ᵀ v ≈ [∇_φ L(θ+εv) − ∇_φ L(θ−εv)]/2ε`` (DARTS-style). Only first-order autodiff is
    used, so fused attention kernels without a double backward work. The truncation error is
    ``O(R²)`` (third derivatives of ``L_in``). ``v = 0`` gives exact zeros.
    """
    size = float(norm(vector))
    if size == 0.0:
        return SecondOrderProducts(zeros_like(detach(theta)), zeros_like(detach(phi)))
    if not math.isfinite(size):
        raise FloatingPointError(f"non-finite vector in a finite-difference product ({where})")
    eps = radius / size
    plus = inner_gradients(
        inner_loss, add(theta, vector, eps), phi, batch, wrt_phi=True, where=where
    )
    minus = inner_gradients(
        inner_loss, add(theta, vector, -eps), phi, batch, wrt_phi=True, where=where
    )
    assert plus.phi is not None and minus.phi is not None
    factor = 1.0 / (2.0 * eps)
    hvp = {k: (plus.theta[k] - minus.theta[k]) * factor for k in theta}
    mixed = {k: (plus.phi[k] - minus.phi[k]) * factor for k in phi}
    return SecondOrderProducts(hvp, mixed)
