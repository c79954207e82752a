"""Preference metrics: pairwise accuracies (METHODS §1–3) and rank agreement (METHODS §6).

All functions take plain tensors, never track gradients, and return python numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from oodpl.core._validation import check_same_shape, check_tensor
from oodpl.core.losses.dpo import implicit_reward
from oodpl.core.losses.policy import _check_logps_and_counts, _mean_token_logps

__all__ = [
    "AccuracyResult",
    "dporm_accuracy",
    "kendall_tau",
    "pl_accuracy",
    "preference_accuracy",
    "ranking_consistency",
]

#: Rows of the pairwise-sign matrix handled at once by :func:`kendall_tau` (bounds memory).
_KENDALL_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class AccuracyResult:
    """Pairwise preference accuracy.

    Attributes:
        accuracy: ``n_correct / n`` = ``mean 1[score_w > score_l]``. Ties stay in the denominator,
            so a tie lowers the accuracy like a mistake would, but it is *not* counted as wrong.
        n_correct: pairs whose chosen score is strictly greater than the rejected score.
        n_ties: pairs whose two scores are exactly equal (bitwise ``==``; no tolerance). Neither
            correct nor wrong.
        n: number of pairs. ``n_wrong = n - n_correct - n_ties`` pairs prefer the rejected one.
    """

    accuracy: float
    n_correct: int
    n_ties: int
    n: int

    @property
    def n_wrong(self) -> int:
        """Pairs whose chosen score is strictly smaller than the rejected score."""
        return self.n - self.n_correct - self.n_ties

    @property
    def tie_rate(self) -> float:
        """``n_ties / n``."""
        return self.n_ties / self.n


def _accuracy(chosen: Tensor, rejected: Tensor) -> AccuracyResult:
    chosen, rejected = chosen.detach(), rejected.detach()
    n = chosen.numel()
    n_correct = int((chosen > rejected).sum())
    n_ties = int((chosen == rejected).sum())
    return AccuracyResult(accuracy=n_correct / n, n_correct=n_correct, n_ties=n_ties, n=n)


def preference_accuracy(chosen_scores: Tensor, rejected_scores: Tensor) -> AccuracyResult:
    """Accuracy ``mean 1[s_w > s_l]`` of any scores (e.g. explicit rewards, METHODS §1).

    Exactly equal scores are ties, reported in ``n_ties`` and counted neither correct nor wrong
    (see :class:`AccuracyResult`).

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite inputs.
    """
    check_tensor("chosen_scores", chosen_scores)
    check_tensor("rejected_scores", rejected_scores)
    check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    return _accuracy(chosen_scores, rejected_scores)


def pl_accuracy(
    chosen_logps: Tensor,
    chosen_n_tokens: Tensor,
    rejected_logps: Tensor,
    rejected_n_tokens: Tensor,
) -> AccuracyResult:
    """PL accuracy ``mean 1[ℓ̄(y_w) > ℓ̄(y_l)]`` on length-normalised log-probs (METHODS §3),
    ``ℓ̄ = logπ(y|x)/|y|`` from summed log-probs and response-token counts.

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite inputs, or token
        counts ``<= 0``.
    """
    _check_logps_and_counts("chosen_logps", chosen_logps, "chosen_n_tokens", chosen_n_tokens)
    _check_logps_and_counts(
        "rejected_logps", rejected_logps, "rejected_n_tokens", rejected_n_tokens
    )
    check_same_shape(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    return _accuracy(
        _mean_token_logps(chosen_logps.detach(), chosen_n_tokens),
        _mean_token_logps(rejected_logps.detach(), rejected_n_tokens),
    )


def dporm_accuracy(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> AccuracyResult:
    """DPORM accuracy ``mean 1[r_dpo(y_w) > r_dpo(y_l)]`` (METHODS §2, [DPORM]).

    ``r_dpo = β(logπ_θ − logπ_ref)`` from *summed* log-probs, computed by
    :func:`oodpl.core.losses.implicit_reward` exactly as ``dpo_loss`` logs it.

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite inputs, or
        ``beta <= 0``.
    """
    logps = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "reference_chosen_logps": reference_chosen_logps,
        "reference_rejected_logps": reference_rejected_logps,
    }
    for name, value in logps.items():
        check_tensor(name, value)
    check_same_shape(**logps)
    with torch.no_grad():
        chosen = implicit_reward(policy_chosen_logps, reference_chosen_logps, beta)
        rejected = implicit_reward(policy_rejected_logps, reference_rejected_logps, beta)
    return _accuracy(chosen, rejected)


def kendall_tau(x: Tensor, y: Tensor) -> float:
    """Kendall's rank correlation τ_b between two score vectors, ties handled (METHODS §6)::

        τ_b = (n_c − n_d) / sqrt((n_0 − n_x)(n_0 − n_y))

    over all ``n_0 = n(n−1)/2`` pairs ``i < j``: ``n_c`` concordant pairs
    (``sign(x_i−x_j) = sign(y_i−y_j) ≠ 0``), ``n_d`` discordant pairs (opposite non-zero signs),
    ``n_x`` / ``n_y`` pairs tied (exactly equal) in ``x`` / ``y``. A pair tied in one vector counts
    neither as concordant nor discordant. Without ties this is τ_a. Same definition as
    ``scipy.stats.kendalltau(variant="b")``. Exact ``O(n²)`` pair count (chunked; fine for the
    rankings of a few thousand items this library compares).

    Raises:
        ValueError naming the argument for mismatched shapes, non-finite values, fewer than two
        items, or a constant ``x`` or ``y`` (τ_b is undefined then, 0/0).
    """
    check_tensor("x", x)
    check_tensor("y", y)
    check_same_shape(x=x, y=y)
    n = x.numel()
    if n < 2:
        raise ValueError(f"x and y need at least 2 items for Kendall's tau, got {n}")
    x64 = x.detach().to(torch.float64)
    y64 = y.detach().to(device=x64.device, dtype=torch.float64)
    score = 0
    untied_x = 0
    untied_y = 0
    rows_per_chunk = max(1, _KENDALL_CHUNK_ELEMENTS // n)
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        sign_x = torch.sign(x64[start:stop, None] - x64[None, :])
        sign_y = torch.sign(y64[start:stop, None] - y64[None, :])
        # Every unordered pair appears twice (i, j) and (j, i) with the same product: halve below.
        score += int((sign_x * sign_y).sum())
        untied_x += int(sign_x.abs().sum())
        untied_y += int(sign_y.abs().sum())
    if untied_x == 0:
        raise ValueError("x is constant (all values tied); Kendall's tau-b is undefined")
    if untied_y == 0:
        raise ValueError("y is constant (all values tied); Kendall's tau-b is undefined")
    tau = (score / 2) / math.sqrt((untied_x / 2) * (untied_y / 2))
    return max(-1.0, min(1.0, tau))


def ranking_consistency(x: Tensor, y: Tensor) -> float:
    """CREAM consistency ``C = (τ_b + 1)/2`` ∈ [0, 1] of two rankings (METHODS §6).

    ``1`` = same order, ``0`` = reversed order; use ``label_smoothing = 1 − C`` with
    ``dpo_loss(loss_type="label_smoothed")``. Raises as :func:`kendall_tau`.
    """
    return (kendall_tau(x, y) + 1.0) / 2.0
