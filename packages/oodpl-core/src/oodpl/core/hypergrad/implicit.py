"""Implicit-function hypergradient at the approximate fixed point ``θ^K`` (METHODS §3).

If ``θ*(φ) = argmin_θ L_in(θ, φ)`` then ``∇_θ L_in(θ*(φ), φ) = 0`` and::

    dL_out(θ*)/dφ = −Jᵀ H⁻¹ ∇_θ L_out(θ*),   H = ∇²_θθ L_in,  J = ∇²_φθ L_in.

We evaluate it at ``θ^K`` (K inner SGD steps from ``θ^0``), solving ``(H + λI) p = ∇_θ L_out`` by

* ``"neumann"``: ``p ≈ η Σ_{j=0}^{J} (I − η(H + λI))^j v`` (J = ``terms`` Hessian-vector
  products; η defaults to the inner lr α, and the series converges when ``0 < η(h + λ) < 2``
  for every eigenvalue h of H). With ``η = α`` and ``λ = 0`` this equals the unrolled
  hypergradient of ``J+1`` more SGD steps taken at the fixed point;
* ``"cg"``: conjugate gradient with damping λ for at most ``terms`` iterations (needs
  ``H + λI`` positive definite; stops early at relative residual ``tol``).

Then ``g = −Jᵀ p`` is one mixed vector–Jacobian product. Memory does not grow with K.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from oodpl.core.hypergrad._autodiff import outer_gradient
from oodpl.core.hypergrad._common import (
    CheckedInputs,
    HypergradResult,
    check_inputs,
    make_result,
    unroll,
)
from oodpl.core.hypergrad._params import (
    Params,
    add,
    check_int,
    check_positive,
    detach,
    dot,
    norm,
    scale,
)
from oodpl.core.hypergrad._second_order import second_order_products

__all__ = ["implicit_hypergradient"]

_METHODS = ("neumann", "cg")
_NO_BATCH = object()


def _damped_hvp(inputs: CheckedInputs, theta: Params, batch: Any, damping: float):
    phi = detach(inputs.phi)

    def apply(v: Params) -> Params:
        prod = second_order_products(
            inputs.inner_loss, theta, phi, batch, v, want_mixed=False, where="implicit solve at θ^K"
        )
        return add(prod.hvp, v, damping) if damping else prod.hvp

    return apply


def _neumann(apply, v: Params, terms: int, step: float) -> tuple[Params, dict[str, float]]:
    """``η Σ_{j=0}^{J} (I − η A)^j v``."""
    term = v
    total = v
    for _ in range(terms):
        term = add(term, apply(term), -step)
        total = add(total, term)
    return scale(total, step), {"hvp_calls": float(terms), "last_term_norm": float(norm(term))}


def _conjugate_gradient(
    apply, v: Params, terms: int, tol: float
) -> tuple[Params, dict[str, float]]:
    """Solve ``A p = v`` for symmetric positive-definite ``A`` (given as a product)."""
    x = {k: t.new_zeros(t.shape) for k, t in v.items()}
    r = v
    d = v
    rr = float(dot(r, r))
    target = tol * math.sqrt(rr)
    calls = 0
    curvature_failure = 0.0
    for _ in range(terms):
        if math.sqrt(rr) <= target or rr == 0.0:
            break
        ad = apply(d)
        calls += 1
        curvature = float(dot(d, ad))
        if curvature <= 0.0:
            curvature_failure = 1.0  # H + λI is not positive definite along d: stop here
            warnings.warn(
                f"cg: H + damping*I is not positive definite (d·Ad = {curvature:.3g} after "
                f"{calls} Hessian-vector products); stopping early — increase damping or use "
                "method='neumann'",
                RuntimeWarning,
                stacklevel=3,
            )
            break
        step = rr / curvature
        x = add(x, d, step)
        r = add(r, ad, -step)
        rr_new = float(dot(r, r))
        d = add(r, d, rr_new / rr)
        rr = rr_new
    residual = math.sqrt(rr) / max(float(norm(v)), 1e-300)
    details = {
        "hvp_calls": float(calls),
        "cg_relative_residual": residual,
        "cg_negative_curvature": curvature_failure,
    }
    return x, details


def implicit_hypergradient(
    inner_loss: Callable[[Params, Params, Any], Any],
    outer_loss: Callable[[Params, Any], Any],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    method: str = "cg",
    terms: int = 10,
    damping: float = 0.0,
    neumann_lr: float | None = None,
    tol: float = 1e-10,
    hessian_batch: Any = _NO_BATCH,
) -> HypergradResult:
    """``−Jᵀ (H + λI)⁻¹ ∇_θ L_out(θ^K)`` with H and J of ``L_in`` at ``θ^K`` (METHODS §3).

    Args:
        lr: inner SGD step size α for the K steps that reach ``θ^K``.
        method: ``"neumann"`` or ``"cg"``.
        terms: Neumann: J in ``Σ_{j=0}^{J}`` (J Hessian-vector products, ``>= 0``);
            CG: maximum iterations (``>= 1``).
        damping: λ >= 0 added to H.
        neumann_lr: η of the Neumann series (default: ``lr``).
        tol: CG stopping threshold on ``‖r‖/‖v‖``.
        hessian_batch: the batch defining H and J (default: the last inner batch). Pass the
            whole support set to differentiate the full inner objective.
    """
    inputs = check_inputs(inner_loss, outer_loss, theta0, phi, inner_batches, lr)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, got {method!r}")
    count = check_int(terms, "terms", minimum=0 if method == "neumann" else 1)
    lam = check_positive(damping, "damping", allow_zero=True)
    eta = inputs.lr if neumann_lr is None else check_positive(neumann_lr, "neumann_lr")
    threshold = check_positive(tol, "tol", allow_zero=True)
    batch = inputs.inner_batches[-1] if hessian_batch is _NO_BATCH else hessian_batch

    unrolled = unroll(inputs)
    theta_k, inner_losses = unrolled.theta, unrolled.inner_losses
    outer_value, v = outer_gradient(inputs.outer_loss, theta_k, outer_batch, where="at θ^K")
    apply = _damped_hvp(inputs, theta_k, batch, lam)
    if method == "neumann":
        p, details = _neumann(apply, v, count, eta)
    else:
        p, details = _conjugate_gradient(apply, v, count, threshold)
    mixed = second_order_products(
        inputs.inner_loss,
        theta_k,
        detach(inputs.phi),
        batch,
        p,
        want_hvp=False,
        where="implicit mixed product at θ^K",
    ).mixed
    grad = {k: -t for k, t in mixed.items()}
    details = {**details, "inner_steps": float(len(inputs.inner_batches)), "damping": lam}
    return make_result(grad, theta_k, inner_losses, outer_value, method, details)
