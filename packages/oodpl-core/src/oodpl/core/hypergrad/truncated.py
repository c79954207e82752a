"""Truncated back-propagation through the inner loop (METHODS §3, variant of Prop. 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from oodpl.core.hypergrad._common import HypergradResult, check_inputs
from oodpl.core.hypergrad._params import Params, check_int
from oodpl.core.hypergrad.unrolled import exact_products, iterative_hypergradient

__all__ = ["truncated_hypergradient"]


def check_truncate(truncate: object, steps: int) -> int:
    value = check_int(truncate, "truncate", minimum=1)
    if value > steps:
        raise ValueError(
            f"truncate must be <= the number of inner steps K={steps} (len(inner_batches)), "
            f"got {value}"
        )
    return value


def truncated_hypergradient(
    inner_loss: Callable[[Params, Params, Any], Any],
    outer_loss: Callable[[Params, Any], Any],
    theta0: Params,
    phi: Params,
    inner_batches: Sequence[Any],
    outer_batch: Any,
    *,
    lr: float,
    truncate: int = 1,
) -> HypergradResult:
    """Truncated back-propagation: only the last ``T = truncate`` terms of Prop. 1's sum.

    ``g_T = −α Σ_{k=K−T}^{K−1} J_kᵀ Π_{j=k+1}^{K−1}(I − αH_j) ∇_θ L_out(θ^K)``. This is the exact
    derivative of the computation in which ``θ^{K−T}`` is held constant (a stop-gradient after
    the first ``K − T`` steps). ``T = 1`` is the one-step lookahead ``−α J_{K−1}ᵀ ∇_θ L_out``;
    ``T = K`` equals :func:`unrolled_hypergradient`. Memory: ``T`` iterates instead of ``K``.
    """
    inputs = check_inputs(inner_loss, outer_loss, theta0, phi, inner_batches, lr)
    steps = len(inputs.inner_batches)
    depth = check_truncate(truncate, steps)
    return iterative_hypergradient(inputs, outer_batch, depth, exact_products(inputs), "truncated")
