"""The closed-form pieces of the PPO objective used by :mod:`oodpl.models.trainers.ppo` (METHODS §3
baselines): masked means and whitening over response tokens, KL-shaped per-token rewards
([Ziegler et al. 2019]), generalised advantage estimation (Schulman et al. 2016) and the clipped
policy and value losses (Schulman et al. 2017). Formulas in :mod:`oodpl.models.trainers.ppo`'s
docstring and each function's own."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``Σ values·mask / Σ mask``."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(values − mean) / sqrt(var + eps)`` over the masked entries (0 elsewhere)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask.to(values.dtype)


def kl_penalized_rewards(
    scores: Tensor, logps: Tensor, reference_logps: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """``r_t = −β_kl (logπ_t − logπ_ref,t)`` on response tokens, ``+ R`` at each row's last one.

    ``logps``/``reference_logps``/``mask`` are ``[B, T]`` with each row's tokens left-aligned.
    """
    rewards = -kl_coef * (logps - reference_logps) * mask.to(logps.dtype)
    last = mask.long().sum(dim=1) - 1
    if bool((last < 0).any()):
        raise ValueError("every row of mask needs at least one response token")
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def generalized_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE over left-aligned ``[B, T]`` rows: ``(A, G = A + V)``, zero on padding."""
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        following = mask[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        next_value = values[:, t + 1] * following if t + 1 < values.shape[1] else following
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running * following) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_π, clip fraction, approx KL = mean(½(logπ − logπ_old)²))`` (masked means)."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        fraction = masked_mean((clipped > unclipped).to(logps.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, fraction, approx_kl


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> Tensor:
    """``½ mean max((V − G)², (V_old + clip(V − V_old, ±ε_V) − G)²)`` (masked)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


__all__ = [
    "clipped_policy_loss",
    "clipped_value_loss",
    "generalized_advantages",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_whiten",
]
