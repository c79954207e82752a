"""Per-sample feature Jacobians: ``J_kᵀ v`` of a separable inner loss by a contraction (METHODS §3).

For a :class:`~oodpl.core.hypergrad.SeparableInnerLoss` with features ``a_k = f(φ, b_k) ∈ R^B``
(one value per row of the support batch ``b_k``), the mixed product of Prop. 1 is::

    J_kᵀ v = (∂a_k/∂φ)ᵀ c_k = Σ_i c_{k,i} ∂a_{k,i}/∂φ,    c_k = ∂_a <∇_θ loss(θ^k, a_k), v>

so once the per-sample Jacobian ``∂a_k/∂φ`` (``[B, *φ.shape]`` per entry) is known, every
``J_kᵀ v`` of the reverse pass is the contraction ``Σ_i c_{k,i} (∂a_{k,i}/∂φ)``: no forward or
backward of ``f`` per reverse step. The loss's ``feature_jacobian(φ, b) -> (a, {name: ∂a/∂φ})``
gives it (e.g. one forward and one backward with per-sample weight gradients); the iterative
methods call it once per kept inner step instead of the plain ``features``.

Memory rule: the Jacobians are kept (one per kept step) only while ``B · |φ| ≤ |θ|`` (numels),
so what the reverse pass stores per step stays within one more ``θ``-sized tensor, as for the
iterates; otherwise the vector-Jacobian product of ``f`` is used per reverse step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from oodpl.core.hypergrad._params import Params, detach, numel

FeatureJacobian = Callable[[Params, Any], "tuple[Tensor, Params] | None"]
"""``feature_jacobian(φ, batch) -> (a [B], {name: ∂a/∂φ[name] of shape [B, *φ[name].shape]})``,
or ``None`` to decline (the vector-Jacobian path is then used). Entries of ``φ`` missing from
the dict are taken as unused (zero Jacobian)."""

Pullback = Callable[[Tensor], Params]
"""``c -> (∂a/∂φ)ᵀ c`` for one inner batch: every entry of ``φ``, detached."""


def jacobian_pullback(jacobian: Params, phi: Params) -> Pullback:
    """``c -> {name: Σ_i c_i J[name][i]}`` (zeros for entries absent from ``jacobian``)."""

    def pullback(cotangent: Tensor) -> Params:
        out: Params = {}
        for key, value in phi.items():
            jac = jacobian.get(key)
            if jac is None:
                out[key] = torch.zeros_like(value)
            else:
                c = cotangent.detach().to(device=jac.device, dtype=jac.dtype)
                out[key] = torch.tensordot(c, jac, dims=1)
        return out

    return pullback


def _checked(result: object, phi: Params, where: str) -> tuple[Tensor, Params]:
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(
            f"feature_jacobian must return (features, {{name: jacobian}}) or None, got "
            f"{type(result).__name__} ({where})"
        )
    value, jacobian = result
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.ndim != 1:
        kind = f"shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, Tensor) else ""
        raise TypeError(
            "feature_jacobian must return a 1-D floating-point features tensor [B], got "
            f"{kind or type(value).__name__} ({where})"
        )
    if not isinstance(jacobian, Mapping):
        kind = type(jacobian).__name__
        raise TypeError(f"feature_jacobian must return a dict of Jacobians, got {kind} ({where})")
    rows = value.shape[0]
    out: Params = {}
    for key, jac in jacobian.items():
        if key not in phi:
            raise ValueError(f"feature_jacobian returned {key!r}, which is not in phi ({where})")
        expected = (rows, *phi[key].shape)
        if not isinstance(jac, Tensor) or tuple(jac.shape) != expected:
            shape = tuple(jac.shape) if isinstance(jac, Tensor) else type(jac).__name__
            raise ValueError(
                f"feature_jacobian[{key!r}] has shape {shape}, expected {expected} "
                f"([B, *phi[{key!r}].shape]) ({where})"
            )
        out[key] = jac.detach().to(phi[key].dtype)
    finite = bool(torch.isfinite(value.detach()).all()) and all(
        bool(torch.isfinite(j).all()) for j in out.values()
    )
    if not finite:
        raise FloatingPointError(f"feature_jacobian returned non-finite values ({where})")
    return value.detach(), out


class KeptJacobians:
    """Per kept inner step: the features and, while the memory rule holds, their Jacobian.

    Active when the loss has a ``feature_jacobian``; it switches itself off for the rest of the
    unroll when the callable declines (returns ``None``) or when ``B · |φ| > |θ|`` (the step's
    features are still used; its mixed product falls back to a vector-Jacobian product).
    ``used`` counts the steps that got a Jacobian, ``declined`` is 1 after a fallback.
    """

    def __init__(self, inner_loss: Any, theta: Params, phi: Params) -> None:
        self.function: FeatureJacobian | None = getattr(inner_loss, "feature_jacobian", None)
        self.phi = detach(phi)
        self.budget = numel(theta)
        self.phi_size = numel(phi)
        self.used = 0
        self.declined = 0

    @property
    def active(self) -> bool:
        return self.function is not None and not self.declined

    def __call__(self, batch: Any, *, where: str) -> tuple[Tensor | None, Pullback | None]:
        """``(a, pullback)``; ``(a, None)`` when the rule fails, ``(None, None)`` if declined."""
        assert self.function is not None
        with torch.enable_grad():
            result = self.function(self.phi, batch)
        if result is None:
            self.declined = 1
            return None, None
        value, jacobian = _checked(result, self.phi, where)
        if value.shape[0] * self.phi_size > self.budget:
            self.declined = 1  # B·|φ| > |θ|: keep the memory of the reverse pass LoRA-sized
            return value, None
        self.used += 1
        return value, jacobian_pullback(jacobian, self.phi)

    def details(self) -> dict[str, float]:
        if self.function is None:
            return {}
        return {
            "feature_jacobian_steps": float(self.used),
            "feature_jacobian_declined": float(self.declined),
        }
