"""Exact second-order products of one inner step by double backward (METHODS §3, Prop. 1).

:class:`StepGraph` holds one inner step's gradient ``∇_θ L_in(θ^k, φ)`` built with
``create_graph=True``; one more backward of ``<∇_θ L_in, v>`` over ``θ`` and the ``φ`` side gives
``H_k v`` and ``J_kᵀ v`` together. Built for a plain inner loss (:func:`step_graph`, leaves ``θ``
and ``φ``) or a :class:`~oodpl.core.hypergrad._autodiff.SeparableInnerLoss`
(:func:`separable_step_graph`, leaves ``θ`` and the features ``a``). Only these forwards run
with SDPA restricted to its math kernel (:func:`twice_differentiable_attention`: the fused
kernels have no double backward); every first-order primitive is in ``_autodiff``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from oodpl.core.hypergrad._autodiff import (
    InnerLoss,
    SecondOrderProducts,
    SeparableInnerLoss,
    _checked_features,
    _grads,
    _graph_pullback,
    pull_back,
    scalar_loss,
)
from oodpl.core.hypergrad._jacobian import Pullback
from oodpl.core.hypergrad._params import Params, detach, dot, leaf_copy, zeros_like

_ERROR_NODES = frozenset({"torch::autograd::Error", "torch::autograd::DelayedError"})


def twice_differentiable_attention() -> contextlib.AbstractContextManager:
    """Restrict ``scaled_dot_product_attention`` to its math kernel (composite ops).

    The fused SDPA kernels (flash / memory-efficient / cuDNN, and the flash kernel PyTorch picks
    on CPU) have no derivative of their backward. Only the forwards whose gradient is built with
    ``create_graph=True`` (:func:`step_graph`, :func:`separable_step_graph`) run under this
    restriction; the inner steps, the outer gradient and every first-order evaluation keep the
    fused kernels (METHODS §3). Losses without attention are unaffected.
    """
    return sdpa_kernel([SDPBackend.MATH])


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


class StepGraph:
    """One inner step's differentiable gradient ``∇_θ L_in(θ^k, φ)`` (``create_graph=True``).

    Built by :func:`step_graph` (generic loss: leaves ``θ`` and, for the mixed product, ``φ``)
    or :func:`separable_step_graph` (leaves ``θ`` and the features ``a``); consumed once by
    :meth:`products`, which frees it. The inner loop's last step builds it to take its SGD step
    and the reverse pass reuses it, so that step's forward is not recomputed.
    """

    def __init__(
        self,
        loss: Tensor,
        theta: Params,
        grads: list[Tensor],
        phi: Params | None,
        features: Tensor | None,
        separable: SeparableInnerLoss | None,
        batch: Any,
        where: str,
    ) -> None:
        self.loss_value = float(loss.detach())
        self.theta, self.grads, self.phi = theta, grads, phi
        self.features, self.separable, self.batch, self.where = features, separable, batch, where
        self.pullback: Pullback | None = None  # c -> (∂a/∂φ)ᵀ c without a features_vjp

    def gradient(self) -> Params:
        """``∇_θ L_in`` (detached)."""
        return {k: g.detach() for k, g in zip(self.theta, self.grads, strict=True)}

    def products(
        self, vector: Params, phi: Params, *, want_hvp: bool = True, want_mixed: bool = True
    ) -> SecondOrderProducts:
        """``H v`` and ``J ᵀv`` from ONE ``autograd.grad`` of ``<∇_θ L_in, v>`` over ``θ`` and the
        ``φ`` side together (``φ``, or ``a`` followed by ``(∂a/∂φ)ᵀ c``); frees the graph."""
        first = self.theta if want_hvp else {}
        if self.separable is not None:
            assert self.features is not None
            second: list[Tensor] = [self.features] if want_mixed else []
        else:
            second = list(self.phi.values()) if want_mixed and self.phi is not None else []
        with torch.enable_grad():
            inner = dot(
                dict(zip(self.theta, self.grads, strict=True)),
                {k: v.detach() for k, v in vector.items()},
            )
            grads = _grads(inner, [*first.values(), *second])
        self.grads = []  # free the graph
        n = len(first)
        hvp = {k: g.detach() for k, g in zip(first, grads[:n], strict=True)}
        if not want_hvp:
            hvp = {k: torch.zeros_like(v) for k, v in self.theta.items()}
        pullback, self.pullback = self.pullback, None
        if not want_mixed:
            mixed = zeros_like(detach(phi))
        elif self.separable is not None:
            mixed = pull_back(
                self.separable, phi, self.batch, grads[n].detach(), pullback, where=self.where
            )
        else:
            assert self.phi is not None
            mixed = {k: g.detach() for k, g in zip(self.phi, grads[n:], strict=True)}
        return SecondOrderProducts(hvp, mixed)


def step_graph(
    inner_loss: InnerLoss,
    theta: Params,
    phi: Params,
    batch: Any,
    *,
    want_mixed: bool = True,
    where: str = "",
) -> StepGraph:
    """Forward ``L_in(θ, φ)`` and ``∇_θ L_in`` with ``create_graph=True`` (checked twice
    differentiable); ``φ`` is a leaf only if the mixed product is wanted. SDPA runs on its math
    kernel here (:func:`twice_differentiable_attention`)."""
    with torch.enable_grad(), twice_differentiable_attention():
        th = leaf_copy(theta)
        ph = leaf_copy(phi) if want_mixed else detach(phi)
        loss = scalar_loss(inner_loss(th, ph, batch), "inner_loss", where)
        g_list = _grads(loss, list(th.values()), create_graph=True)
        _check_twice_differentiable(g_list, where)
    return StepGraph(loss, th, g_list, ph if want_mixed else None, None, None, batch, where)


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
    graph = step_graph(inner_loss, theta, phi, batch, want_mixed=want_mixed, where=where)
    return graph.products(vector, phi, want_hvp=want_hvp, want_mixed=want_mixed)


def separable_step_graph(
    inner_loss: SeparableInnerLoss,
    theta: Params,
    features: Tensor | None,
    batch: Any,
    *,
    phi: Params | None = None,
    pullback: Pullback | None = None,
    where: str = "",
) -> StepGraph:
    """:func:`step_graph` for a :class:`SeparableInnerLoss`: leaves ``θ`` and ``a``.

    With ``phi`` (and ``features=None``) the features are computed here with a first-order
    graph to ``φ`` (fused kernels), which :meth:`StepGraph.products` then uses for ``J ᵀv``
    instead of a fresh :func:`features_vjp`: the inner loop's last step scores its batch once.
    A ``pullback`` (e.g. a kept per-sample Jacobian) is used for ``J ᵀv`` instead.
    """
    if phi is not None:
        with torch.enable_grad():
            ph = leaf_copy(phi)
            value = _checked_features(inner_loss.features(ph, batch), where)
        pullback = _graph_pullback(value, ph)
        features = value
    assert features is not None
    with torch.enable_grad(), twice_differentiable_attention():
        th = leaf_copy(theta)
        a = features.detach().requires_grad_(True)
        loss = scalar_loss(inner_loss.loss(th, a, batch), "inner_loss", where)
        g_list = _grads(loss, list(th.values()), create_graph=True)
        _check_twice_differentiable(g_list, where)
    graph = StepGraph(loss, th, g_list, None, a, inner_loss, batch, where)
    graph.pullback = pullback
    return graph


def separable_second_order_products(
    inner_loss: SeparableInnerLoss,
    theta: Params,
    phi: Params,
    features: Tensor,
    batch: Any,
    vector: Params,
    *,
    want_hvp: bool = True,
    pullback: Pullback | None = None,
    where: str = "",
) -> SecondOrderProducts:
    """:func:`second_order_products` for a :class:`SeparableInnerLoss`.

    One double backward of ``loss(θ, a)`` gives ``H v`` and ``c = ∂_a <∇_θ loss, v>`` in ONE
    ``autograd.grad`` call over ``(θ, a)``; then ``J ᵀv = (∂a/∂φ)ᵀ c`` (``pullback``, else
    :func:`features_vjp`). Equal to the generic path up to round-off (same chain rule, evaluated
    in another order).
    """
    graph = separable_step_graph(inner_loss, theta, features, batch, pullback=pullback, where=where)
    return graph.products(vector, phi, want_hvp=want_hvp)
