"""Fixtures shared by the core tests (pytest's importlib mode: test modules cannot import each
other, so shared problem builders live here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss

DT = torch.float64
N_CAND, D_POLICY, D_REWARD, HIDDEN, ROWS = 4, 5, 3, 2, 6


def separable_policy_problem(
    seed: int = 0,
    *,
    steps: int = 4,
    n_prompts: int = 10,
    reward: str = "linear",
    extra_theta: int = 0,
) -> tuple[Any, ...]:
    """A bilevel problem whose inner loss is separable (``φ`` only through per-row rewards).

    Softmax policy over ``N_CAND`` candidates per prompt (``θ``: weights ``w``, ``log_temp`` and
    ``extra_theta`` extra values that scale the logits by ``1 + 0.01 Σ extra``), a reward ``r_φ``
    that is ``"linear"`` (``φ``: ``r``, ``bias``) or a one-hidden-layer ``"mlp"`` (``W``, ``u``,
    ``bias``; nonlinear in ``φ``), plus an ``unused`` entry of ``φ``; reward-weighted regression +
    proximal inner loss, Bradley-Terry outer loss; ``steps`` support batches of ``ROWS`` rows.

    Returns ``(features, loss, outer_loss, theta0, phi, batches, outer_batch)``, float64.
    """
    if reward not in ("linear", "mlp"):
        raise ValueError(f"reward must be 'linear' or 'mlp', got {reward!r}")
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_prompts, N_CAND, D_POLICY, generator=gen, dtype=DT)
    rfeats = torch.randn(n_prompts, N_CAND, D_REWARD, generator=gen, dtype=DT)
    lengths = torch.randint(1, 6, (n_prompts, N_CAND), generator=gen)
    theta0 = {
        "w": 0.3 * torch.randn(D_POLICY, generator=gen, dtype=DT),
        "log_temp": torch.tensor(0.1, dtype=DT),
    }
    if extra_theta:
        theta0["extra"] = torch.randn(extra_theta, generator=gen, dtype=DT)
    if reward == "mlp":
        phi = {
            "W": torch.randn(D_REWARD, HIDDEN, generator=gen, dtype=DT),
            "u": torch.randn(HIDDEN, generator=gen, dtype=DT),
            "bias": torch.tensor(0.3, dtype=DT),
            "unused": torch.randn(3, generator=gen, dtype=DT),
        }
    else:
        phi = {
            "r": torch.randn(D_REWARD, generator=gen, dtype=DT),
            "bias": torch.tensor(0.3, dtype=DT),
            "unused": torch.randn(2, 2, generator=gen, dtype=DT),
        }

    def logps(theta, prompts, cands):
        scale = torch.exp(theta["log_temp"])
        if "extra" in theta:
            scale = scale * (1 + 0.01 * theta["extra"].sum())
        logits = (feats[prompts] @ theta["w"]) * scale
        per_token = torch.log_softmax(logits, -1).gather(-1, cands[:, None]).squeeze(-1)
        n_tok = lengths[prompts, cands]
        return per_token * n_tok, n_tok

    def features(phi_, batch):
        prompts, cands = batch
        if reward == "mlp":
            return torch.tanh(rfeats[prompts, cands] @ phi_["W"]) @ phi_["u"] + phi_["bias"]
        return rfeats[prompts, cands] @ phi_["r"] + phi_["bias"]

    def loss(theta, rewards, batch):
        lp, n_tok = logps(theta, *batch)
        prox = sum(torch.sum((theta[k] - theta0[k]) ** 2) for k in theta)
        return reward_weighted_regression_loss(lp, n_tok, rewards, beta=0.5) + 0.05 * prox

    def outer_loss(theta, batch):
        prompts, chosen, rejected = batch
        return policy_preference_loss(
            *logps(theta, prompts, chosen), *logps(theta, prompts, rejected)
        )

    batches = [
        (
            torch.randint(0, n_prompts, (ROWS,), generator=gen),
            torch.randint(0, N_CAND, (ROWS,), generator=gen),
        )
        for _ in range(steps)
    ]
    chosen = torch.randint(0, N_CAND, (n_prompts,), generator=gen)
    rejected = (chosen + torch.randint(1, N_CAND, (n_prompts,), generator=gen)) % N_CAND
    outer_batch = (torch.arange(n_prompts), chosen, rejected)
    return features, loss, outer_loss, theta0, phi, batches, outer_batch


@pytest.fixture(scope="session")
def separable_problem() -> Callable[..., tuple[Any, ...]]:
    """:func:`separable_policy_problem` (session-scoped, so hypothesis tests may use it)."""
    return separable_policy_problem
