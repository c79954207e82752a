"""Supervised fine-tuning of a policy on ``Completion`` records (the SFT baseline, METHODS §3).

Loss (:func:`oodpl.core.losses.sft_loss`) on the response tokens only, through
:meth:`Policy.sequence_logps`:

- ``normalize="token"``: ``L = −Σ_b logπ(y_b|x_b) / Σ_b |y_b|`` (every token weighs the same);
- ``normalize="sequence"``: ``L = −(1/B) Σ_b logπ(y_b|x_b)/|y_b|``.

Runs on the training engine (torch or DeepSpeed backend) through
:func:`oodpl.models.engine.loop.train`: seeded data order, JSONL metrics, resumable checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oodpl.core.losses import SFT_NORMALIZATIONS, sft_loss
from oodpl.core.records import Completion
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.policy import Policy
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    PolicyTrainResult,
    check_choice,
    check_policy,
    check_records,
    resolve_engine,
    run_loop,
)


@dataclass(frozen=True)
class SFTConfig(CollateOptions):
    """Settings of :func:`train_sft` (optimiser, batch size and steps live in ``EngineConfig``).

    Attributes:
        normalize: ``"token"`` (default, the usual causal-LM loss) or ``"sequence"``.
        max_length, max_prompt_length: collator limits (``None``: the model's).
    """

    normalize: str = "token"

    def __post_init__(self) -> None:
        check_choice(self.normalize, "SFTConfig.normalize", SFT_NORMALIZATIONS)
        self.collator_overrides()


def sft_loss_fn(normalize: str = "token"):
    """``loss_fn(model, batch) -> (loss, metrics)`` for the engine loop (a sequence batch)."""

    def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logps, n_tokens = model.sequence_logps(batch)
        loss = sft_loss(logps, n_tokens, normalize=normalize)
        return loss, {"tokens": float(n_tokens.sum())}

    return loss_fn


def train_sft(
    policy: Policy,
    completions: Sequence[Completion],
    config: SFTConfig | None = None,
    *,
    engine: EngineConfig | TrainingEngine | None = None,
    max_steps: int | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> PolicyTrainResult:
    """Fine-tune ``policy`` (in place) on ``completions`` by maximum likelihood.

    Args:
        policy: the policy; its trainable parameters (LoRA [+ LM head] or all) are updated.
        completions: the fine-tuning data (``prompt``, ``response``).
        config: loss normalisation and collator limits (:class:`SFTConfig`).
        engine: an :class:`EngineConfig` (backend, lr, micro-batch size, ``max_steps``, seed) or
            a :class:`TrainingEngine` already built around ``policy`` (continues its optimiser).
        max_steps: optimizer steps to train *until* (default ``engine.config.max_steps``).
        log_path: append one JSONL record per optimizer step (``loss``, ``tokens``, ``lr``, ...).
        checkpoint_dir, checkpoint_every, keep_last, resume_from: see the engine loop.

    Returns:
        :class:`PolicyTrainResult` (the policy, per-step history, the engine, last checkpoint).
    """
    policy = check_policy(policy)
    records = check_records(completions, Completion, "completions")
    config = config or SFTConfig()
    if not isinstance(config, SFTConfig):
        raise TypeError(f"config must be an SFTConfig, got {type(config).__name__}")
    trainer = resolve_engine(policy, engine)
    collator = policy.completion_collator(**config.collator_overrides())
    loop = run_loop(
        trainer,
        records,
        sft_loss_fn(config.normalize),
        collator,
        max_steps=max_steps,
        log_path=log_path,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        resume_from=resume_from,
    )
    return PolicyTrainResult(policy, loop.history, trainer, loop.last_checkpoint)


__all__ = ["SFTConfig", "sft_loss_fn", "train_sft"]
