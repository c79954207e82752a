"""Reduction of per-pair / per-sequence losses, shared by the loss modules."""

from __future__ import annotations

from torch import Tensor

from oodpl.core._validation import check_choice

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_reduction(reduction: object) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ``ValueError``."""
    return check_choice("reduction", reduction, REDUCTIONS)


def reduce_losses(losses: Tensor, reduction: str) -> Tensor:
    """``mean`` -> ``losses.mean()``, ``sum`` -> ``losses.sum()``, ``none`` -> ``losses``."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
