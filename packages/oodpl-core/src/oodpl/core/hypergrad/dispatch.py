"""One entry point for every hypergradient method (METHODS §3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from oodpl.core.hypergrad._common import HypergradResult
from oodpl.core.hypergrad._params import Params
from oodpl.core.hypergrad.first_order import first_order_hypergradient
from oodpl.core.hypergrad.implicit import implicit_hypergradient
from oodpl.core.hypergrad.truncated import truncated_hypergradient
from oodpl.core.hypergrad.unrolled import unrolled_hypergradient

__all__ = ["METHODS", "hypergradient"]

METHODS: tuple[str, ...] = ("unrolled", "truncated", "first_order", "neumann", "cg")


def hypergradient(
    inner_loss: Callable[[Params, Params, Any], Any],
    outer_loss: Callable[[Params, Any], Any],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    method: str = "unrolled",
    **options: Any,
) -> HypergradResult:
    """Dispatch to the hypergradient named by ``method``; ``options`` go to that function.

    ``"unrolled"`` → :func:`unrolled_hypergradient`; ``"truncated"`` (``truncate=T``) →
    :func:`truncated_hypergradient`; ``"first_order"`` (``radius=R``, ``truncate=T``) →
    :func:`first_order_hypergradient`; ``"neumann"`` / ``"cg"`` (``terms``, ``damping``, ...) →
    :func:`implicit_hypergradient` with that solver.
    """
    args = (inner_loss, outer_loss, theta0, phi, inner_batches, outer_batch)
    if method == "unrolled":
        return unrolled_hypergradient(*args, lr=lr, **options)
    if method == "truncated":
        return truncated_hypergradient(*args, lr=lr, **options)
    if method == "first_order":
        return first_order_hypergradient(*args, lr=lr, **options)
    if method in ("neumann", "cg"):
        if "method" in options:
            raise TypeError("pass the solver as method='neumann' or method='cg', not twice")
        return implicit_hypergradient(*args, lr=lr, method=method, **options)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
