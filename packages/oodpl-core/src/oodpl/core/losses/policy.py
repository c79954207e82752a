"""Losses on a policy's sequence log-probabilities: OODPL outer/inner objectives and SFT.

Inputs are summed response log-probabilities ``logπ(y|x)`` ``[B]`` and response-token counts
``|y|`` ``[B]`` (integer or float, all > 0), as returned by ``Policy.sequence_logps``. The
length-normalised log-probability is ``ℓ̄ = logπ(y|x)/|y|`` (METHODS notation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from oodpl.core._validation import (
    check_choice,
    check_positive,
    check_same_shape,
    check_tensor,
    check_token_counts,
)
from oodpl.core.losses._reduction import check_reduction, reduce_losses

__all__ = [
    "RWR_WEIGHTINGS",
    "SFT_NORMALIZATIONS",
    "length_normalized_logps",
    "policy_preference_loss",
    "reward_weighted_regression_loss",
    "reward_weights",
    "sft_loss",
]

#: Weightings accepted by :func:`reward_weighted_regression_loss` / :func:`reward_weights`.
RWR_WEIGHTINGS: tuple[str, ...] = ("softmax", "clipped_exp")
#: Normalisations accepted by :func:`sft_loss`.
SFT_NORMALIZATIONS: tuple[str, ...] = ("token", "sequence")


def _check_logps_and_counts(
    logps_name: str, logps: Tensor, counts_name: str, n_tokens: Tensor
) -> None:
    check_tensor(logps_name, logps)
    check_token_counts(counts_name, n_tokens)
    check_same_shape(**{logps_name: logps, counts_name: n_tokens})


def _mean_token_logps(logps: Tensor, n_tokens: Tensor) -> Tensor:
    return logps / n_tokens.to(logps.dtype)


def length_normalized_logps(logps: Tensor, n_tokens: Tensor) -> Tensor:
    """``ℓ̄ = logπ(y|x)/|y|``: summed response log-probs divided by response-token counts.

    Raises:
        ValueError naming the argument for mismatched shapes, empty/non-finite ``logps`` or
        ``n_tokens <= 0``.
    """
    _check_logps_and_counts("logps", logps, "n_tokens", n_tokens)
    return _mean_token_logps(logps, n_tokens)


def policy_preference_loss(
    chosen_logps: Tensor,
    chosen_n_tokens: Tensor,
    rejected_logps: Tensor,
    rejected_n_tokens: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Bradley–Terry loss on the policy's length-normalised log-probs ([OODPL] Eq. 6–7, 11)::

        ℓ_b = −log σ(ℓ̄(y_w,b) − ℓ̄(y_l,b)),   ℓ̄(y) = logπ(y|x)/|y|

    This is the OODPL outer objective ``L_out`` (METHODS §3) and the HPL baseline. Adding the same
    per-token constant ``c`` to every token (``logπ(y) + c|y|``) leaves it unchanged.
    Gradient (reduction="mean"): ``∂L/∂logπ(y_w,b) = −σ(−Δ_b)/(|y_w,b| B)`` and
    ``∂L/∂logπ(y_l,b) = +σ(−Δ_b)/(|y_l,b| B)`` with ``Δ = ℓ̄_w − ℓ̄_l``.

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite inputs, token
        counts ``<= 0``, or an unknown ``reduction``.
    """
    _check_logps_and_counts("chosen_logps", chosen_logps, "chosen_n_tokens", chosen_n_tokens)
    _check_logps_and_counts(
        "rejected_logps", rejected_logps, "rejected_n_tokens", rejected_n_tokens
    )
    check_same_shape(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    check_reduction(reduction)
    delta = _mean_token_logps(chosen_logps, chosen_n_tokens) - _mean_token_logps(
        rejected_logps, rejected_n_tokens
    )
    return reduce_losses(-F.logsigmoid(delta), reduction)


def reward_weights(
    rewards: Tensor,
    *,
    beta: float = 1.0,
    weighting: str = "softmax",
    max_weight: float = 20.0,
) -> Tensor:
    """Per-sample weights of the OODPL inner objective ([OODPL] Eq. 8–10, METHODS §3).

    - ``"softmax"``: ``w_b = B · softmax_b(r_b/β)`` — self-normalised estimate of ``exp(r/β)/Z``
      with the partition function ``Z`` estimated over the batch; ``Σ_b w_b = B``, invariant to
      adding a constant to all rewards.
    - ``"clipped_exp"``: ``w_b = min(exp(r_b/β), max_weight)`` (AWR-style clip), computed as
      ``exp(min(r_b/β, log max_weight))`` so large rewards never overflow; clipped weights have zero
      gradient.

    Larger ``β`` gives flatter weights. The weights are differentiable w.r.t. ``rewards`` (the
    bilevel hypergradient flows through them).

    Raises:
        ValueError naming the argument for empty/non-finite ``rewards``, ``beta <= 0``,
        ``max_weight <= 0`` or an unknown ``weighting``.
    """
    check_tensor("rewards", rewards)
    beta = check_positive("beta", beta)
    check_choice("weighting", weighting, RWR_WEIGHTINGS)
    max_weight = check_positive("max_weight", max_weight)
    scaled = rewards / beta
    if weighting == "softmax":
        return rewards.shape[0] * torch.softmax(scaled, dim=0)
    return torch.exp(torch.clamp(scaled, max=math.log(max_weight)))


def reward_weighted_regression_loss(
    logps: Tensor,
    n_tokens: Tensor,
    rewards: Tensor,
    *,
    beta: float = 1.0,
    weighting: str = "softmax",
    max_weight: float = 20.0,
) -> Tensor:
    """Reward-weighted maximum likelihood, the OODPL inner objective ([OODPL] Eq. 10, METHODS §3)::

        L_in = −(1/B) Σ_b w_b · ℓ̄_b,   ℓ̄_b = logπ(y_b|x_b)/|y_b|,   w = reward_weights(r)

    (for ``"softmax"`` this equals ``−Σ_b softmax_b(r/β) ℓ̄_b``). See :func:`reward_weights` for
    ``w``; it stays differentiable w.r.t. ``rewards``.
    Gradients: ``∂L/∂logπ_b = −w_b/(B|y_b|)``; softmax:
    ``∂L/∂r_j = −(1/β) s_j (ℓ̄_j − Σ_b s_b ℓ̄_b)`` with ``s = softmax(r/β)``; clipped_exp:
    ``∂L/∂r_j = −w_j ℓ̄_j/(βB)`` where unclipped, 0 where clipped.

    Args:
        logps: summed response log-probs ``[B]``; n_tokens: response-token counts ``[B]`` (> 0);
        rewards: ``r_φ(x_b, y_b)`` ``[B]``; beta: ``β > 0``; weighting: one of
        :data:`RWR_WEIGHTINGS`; max_weight: clip for ``"clipped_exp"`` (> 0).

    Raises:
        ValueError naming the argument for mismatched shapes, empty/non-finite inputs, token
        counts ``<= 0``, ``beta <= 0``, ``max_weight <= 0`` or an unknown ``weighting``.
    """
    _check_logps_and_counts("logps", logps, "n_tokens", n_tokens)
    check_tensor("rewards", rewards)
    check_same_shape(logps=logps, rewards=rewards)
    weights = reward_weights(rewards, beta=beta, weighting=weighting, max_weight=max_weight)
    return -(weights * _mean_token_logps(logps, n_tokens)).mean()


def sft_loss(logps: Tensor, n_tokens: Tensor, normalize: str = "token") -> Tensor:
    """Negative log-likelihood of the responses (supervised fine-tuning).

    - ``"token"``: ``−Σ_b logπ(y_b) / Σ_b |y_b|`` — every token in the batch weighs the same (the
      usual causal-LM loss).
    - ``"sequence"``: ``−(1/B) Σ_b logπ(y_b)/|y_b|`` — every sequence weighs the same.

    The two agree when all responses have the same length.

    Raises:
        ValueError naming the argument for mismatched shapes, empty/non-finite ``logps``,
        ``n_tokens <= 0`` or an unknown ``normalize``.
    """
    _check_logps_and_counts("logps", logps, "n_tokens", n_tokens)
    check_choice("normalize", normalize, SFT_NORMALIZATIONS)
    if normalize == "token":
        return -logps.sum() / n_tokens.to(logps.dtype).sum()
    return -_mean_token_logps(logps, n_tokens).mean()
