"""The derivative primitives every hypergradient is assembled from (METHODS §3).

All functions take the *pure* callables of the contract,
``inner_loss(theta, phi, batch) -> scalar`` and ``outer_loss(theta, batch) -> scalar``, evaluate
them on fresh leaf copies of the parameter dicts, and return detached results. Each call builds at
most one step's graph (``create_graph`` only inside :func:`step_graph` /
:func:`separable_step_graph`, under SDPA's math kernel), so memory does not grow with the number
of inner steps. Parameters a loss does not use get an exact zero gradient instead of ``None``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from oodpl.core.hypergrad._jacobian import FeatureJacobian, Pullback
from oodpl.core.hypergrad._params import Params, detach, dot, leaf_copy, zeros_like

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
