"""Conformance kit: check your own losses and hypergradients against finite differences.

Everything here is a small public function any user (or a partner package's test-suite) can call
on their own callables, e.g.::

    from oodpl.core.testing import check_gradient, check_hypergradient

    check_gradient(lambda p: my_loss(p["w"]), {"w": torch.randn(5, dtype=torch.float64)})
    check_hypergradient(inner, outer, theta0, phi, batches, query, lr=0.1, method="unrolled")

Both raise ``AssertionError`` with the measured errors when the check fails (pass
``raise_on_failure=False`` to get the report only). Use float64: central differences with
``eps ≈ 1e-6`` have truncation error ``O(eps²)`` and round-off ``O(u/eps)``, about 1e-10 in float64
but useless in float32.

What each hypergradient is compared with (finite differences of ``φ ↦ L_out(θ^K(φ))``):

* ``unrolled``, ``first_order``, ``neumann``, ``cg``: the full K-step unrolled computation
  (for the implicit methods this is the converged solution only if the K steps converged: pass
  enough inner batches, the comparison is then to ``dL_out(θ*(φ))/dφ``);
* ``truncated`` (and ``first_order`` with ``truncate=T``): the *truncated computation*, in which the
  first ``K−T`` steps use the base ``φ`` held fixed and only the last ``T`` steps see the perturbed
  ``φ`` — exactly the function whose derivative truncated back-propagation computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from oodpl.core.hypergrad._autodiff import inner_gradients, scalar_loss
from oodpl.core.hypergrad._params import (
    Params,
    check_int,
    check_params,
    check_positive,
    clone,
    detach,
    dot,
    leaf_copy,
    norm,
    numel,
    sub,
)
from oodpl.core.hypergrad.dispatch import METHODS, hypergradient

__all__ = [
    "GradientCheck",
    "check_gradient",
    "check_hypergradient",
    "finite_difference_gradient",
    "finite_difference_hypergradient",
    "relative_error",
    "unrolled_outer_loss",
]


@dataclass(frozen=True)
class GradientCheck:
    """Outcome of a finite-difference comparison.

    ``abs_error = ‖analytic − numeric‖`` (over all entries, or over the directional derivatives
    in ``directions`` mode), ``rel_error = abs_error / ‖numeric‖``; ``passed`` means
    ``abs_error <= atol + rtol · ‖numeric‖``.
    """

    passed: bool
    abs_error: float
    rel_error: float
    mode: str
    analytic: Params | Tensor
    numeric: Params | Tensor

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{verdict} ({self.mode}): |analytic - numeric| = {self.abs_error:.3e}, "
            f"relative {self.rel_error:.3e}"
        )


def relative_error(actual: Params, expected: Params) -> float:
    """``‖actual − expected‖ / ‖expected‖`` over all entries (0 when both are zero)."""
    diff = float(norm(sub(detach(actual), detach(expected))))
    scale = float(norm(expected))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def _as_float(value: object, name: str) -> float:
    if isinstance(value, Tensor):
        return float(scalar_loss(value, name, "finite differences").detach())
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise FloatingPointError(f"{name} returned a non-finite value {number}")
    return number


def finite_difference_gradient(
    fn: Callable[[Params], Any], params: Params, *, eps: float = 1e-6
) -> Params:
    """Central differences ``(f(p + eps e_i) − f(p − eps e_i)) / 2 eps`` for every entry.

    Costs ``2 · numel(params)`` evaluations of ``fn``; ``params`` is not modified.
    """
    base = clone(check_params(params, "params"))
    step = check_positive(eps, "eps")
    out: Params = {}
    with torch.no_grad():
        for key, value in base.items():
            grad = torch.zeros_like(value)
            flat = value.reshape(-1)
            for i in range(flat.numel()):
                original = flat[i].item()
                flat[i] = original + step
                plus = _as_float(fn(base), "fn")
                flat[i] = original - step
                minus = _as_float(fn(base), "fn")
                flat[i] = original
                grad.view(-1)[i] = (plus - minus) / (2.0 * step)
            out[key] = grad
    return out


def _compare(analytic, numeric, mode: str, rtol: float, atol: float) -> GradientCheck:
    if isinstance(analytic, Tensor):
        abs_error = float(torch.linalg.vector_norm((analytic - numeric).double()))
        scale = float(torch.linalg.vector_norm(numeric.double()))
    else:
        abs_error = float(norm(sub(analytic, numeric)))
        scale = float(norm(numeric))
    rel = abs_error / scale if scale > 0 else (0.0 if abs_error == 0 else math.inf)
    passed = abs_error <= atol + rtol * scale
    return GradientCheck(passed, abs_error, rel, mode, analytic, numeric)


def _finish(check: GradientCheck, what: str, raise_on_failure: bool) -> GradientCheck:
    if raise_on_failure and not check.passed:
        raise AssertionError(f"{what} check {check.summary()}")
    return check


def _random_directions(params: Params, count: int, seed: int) -> list[Params]:
    gen = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(count):
        raw = {
            k: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.device, v.dtype)
            for k, v in params.items()
        }
        size = float(norm(raw))
        directions.append({k: t / size for k, t in raw.items()})
    return directions


def _choose_mode(params: Params, n_directions: int | None, max_coordinates: int) -> str:
    if n_directions is not None:
        check_int(n_directions, "n_directions", minimum=1)
        return "directions"
    return "coordinates" if numel(params) <= max_coordinates else "directions"


def check_gradient(
    fn: Callable[[Params], Tensor],
    params: Params | Tensor,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    n_directions: int | None = None,
    max_coordinates: int = 2000,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradientCheck:
    """Compare autograd's ``∇fn(params)`` with central finite differences.

    ``fn`` maps a parameter dict (or a single tensor, if ``params`` is one) to a scalar tensor.
    Small inputs (``<= max_coordinates`` entries) are checked entry by entry; larger ones, or
    when ``n_directions`` is given, along that many random unit directions ``u``
    (``<∇f, u>`` vs ``(f(p + eps u) − f(p − eps u)) / 2 eps``; default 8 directions).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    single = isinstance(params, Tensor)
    checked = check_params({"x": params} if single else params, "params")

    def call(p: Params) -> Tensor:
        return fn(p["x"]) if single else fn(p)  # type: ignore[arg-type]

    with torch.enable_grad():
        leaves = leaf_copy(checked)
        value = scalar_loss(call(leaves), "fn", "check_gradient")
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    analytic = {
        k: torch.zeros_like(v) if g is None else g.detach()
        for (k, v), g in zip(leaves.items(), grads, strict=True)
    }
    mode = _choose_mode(checked, n_directions, max_coordinates)
    if mode == "coordinates":
        numeric = finite_difference_gradient(call, checked, eps=eps)
        check = _compare(analytic, numeric, mode, rtol, atol)
        if single:
            check = GradientCheck(
                check.passed, check.abs_error, check.rel_error, mode, analytic["x"], numeric["x"]
            )
        return _finish(check, "gradient", raise_on_failure)
    step = check_positive(eps, "eps")
    directions = _random_directions(checked, n_directions or 8, seed)
    base = detach(checked)
    analytic_dd, numeric_dd = [], []
    with torch.no_grad():
        for u in directions:
            plus = _as_float(call({k: base[k] + step * u[k] for k in base}), "fn")
            minus = _as_float(call({k: base[k] - step * u[k] for k in base}), "fn")
            numeric_dd.append((plus - minus) / (2.0 * step))
            analytic_dd.append(float(dot(analytic, u)))
    check = _compare(
        torch.tensor(analytic_dd, dtype=torch.float64),
        torch.tensor(numeric_dd, dtype=torch.float64),
        mode,
        rtol,
        atol,
    )
    return _finish(check, "gradient", raise_on_failure)


def unrolled_outer_loss(
    inner_loss: Callable[[Params, Params, Any], Tensor],
    outer_loss: Callable[[Params, Any], Tensor],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    truncate: int | None = None,
    reference_phi: Params | None = None,
) -> float:
    """``L_out(θ^K)`` after K plain SGD steps on ``L_in(·; φ)`` — the function hypergradients
    differentiate. With ``truncate=T`` the first ``K−T`` steps use ``reference_phi`` instead
    of ``phi`` (the stop-gradient of truncated back-propagation).
    """
    batches = list(inner_batches)
    steps = len(batches)
    if steps < 1:
        raise ValueError("inner_batches must hold at least one batch")
    rate = check_positive(lr, "lr")
    depth = steps if truncate is None else check_int(truncate, "truncate", minimum=1)
    if depth > steps:
        raise ValueError(f"truncate must be <= len(inner_batches)={steps}, got {depth}")
    early_phi = phi if reference_phi is None else reference_phi
    theta = detach(check_params(theta0, "theta0"))
    for step, batch in enumerate(batches):
        step_phi = early_phi if step < steps - depth else phi
        grads = inner_gradients(inner_loss, theta, detach(step_phi), batch, where=f"step {step}")
        theta = {k: theta[k] - rate * grads.theta[k] for k in theta}
    with torch.no_grad():
        return _as_float(outer_loss(theta, outer_batch), "outer_loss")


def finite_difference_hypergradient(
    inner_loss: Callable[[Params, Params, Any], Tensor],
    outer_loss: Callable[[Params, Any], Tensor],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    eps: float = 1e-5,
    truncate: int | None = None,
) -> Params:
    """Central finite differences of :func:`unrolled_outer_loss` in every entry of ``phi``.

    With ``truncate=T`` the function differentiated is the truncated computation (first
    ``K−T`` steps at the unperturbed ``phi``). Costs ``2·numel(phi)·K`` inner gradients.
    """
    base = clone(check_params(phi, "phi"))
    frozen = clone(base)

    def value(p: Params) -> float:
        return unrolled_outer_loss(
            inner_loss,
            outer_loss,
            theta0,
            p,
            inner_batches,
            outer_batch,
            lr=lr,
            truncate=truncate,
            reference_phi=frozen,
        )

    return finite_difference_gradient(value, base, eps=eps)


def check_hypergradient(
    inner_loss: Callable[[Params, Params, Any], Tensor],
    outer_loss: Callable[[Params, Any], Tensor],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    method: str = "unrolled",
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    raise_on_failure: bool = True,
    **options: Any,
) -> GradientCheck:
    """Compare ``hypergradient(method=...)`` with finite differences of the matching computation.

    See the module docstring for which computation each method is compared with. Loosen
    ``rtol`` for ``first_order`` (error ``O(radius²)``) and for the implicit methods (error
    from the unconverged inner loop and the truncated solve).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    args = (inner_loss, outer_loss, theta0, phi, inner_batches, outer_batch)
    result = hypergradient(*args, lr=lr, method=method, **options)
    truncate = options.get("truncate") if method in ("truncated", "first_order") else None
    if method == "truncated" and truncate is None:
        truncate = 1  # truncated_hypergradient's default
    numeric = finite_difference_hypergradient(
        inner_loss,
        outer_loss,
        theta0,
        phi,
        inner_batches,
        outer_batch,
        lr=lr,
        eps=eps,
        truncate=truncate,
    )
    check = _compare(result.grad, numeric, "coordinates", rtol, atol)
    return _finish(check, f"{method} hypergradient", raise_on_failure)
