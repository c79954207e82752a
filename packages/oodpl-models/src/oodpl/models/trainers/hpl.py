"""HPL baseline ([OODPL]): minimise the outer objective ``L_out`` directly, no bilevel.

``L_out(θ) = −mean_b log σ(ℓ̄_θ(x_b, y_w,b) − ℓ̄_θ(x_b, y_l,b))``, ``ℓ̄ = logπ(y|x)/|y|``
([OODPL] Eq. 6–7, 11; :func:`oodpl.core.losses.policy_preference_loss`) on the training
domains' preference pairs. Chosen and rejected responses go through one stacked forward
(:meth:`Policy.preference_logps`). Runs on the training engine (torch or DeepSpeed backend).
Logged per step: ``loss``, ``pl_accuracy`` (``mean 1[ℓ̄_w > ℓ̄_l]`` on the batch) and ``margin``
(``mean ℓ̄_w − ℓ̄_l``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oodpl.core.losses import length_normalized_logps, policy_preference_loss
from oodpl.core.records import Preference
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.policy import Policy
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    PolicyTrainResult,
    check_policy,
    check_records,
    resolve_engine,
    run_loop,
)


@dataclass(frozen=True)
class HPLConfig(CollateOptions):
    """Settings of :func:`train_hpl`: collator limits only (optimiser etc. in ``EngineConfig``).

    Attributes:
        max_length, max_prompt_length: collator limits (``None``: the model's).
    """

    def __post_init__(self) -> None:
        self.collator_overrides()


def hpl_loss_fn():
    """``loss_fn(model, pair_batch) -> (L_out, {"pl_accuracy", "margin"})`` for the engine loop."""

    def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        chosen, chosen_n, rejected, rejected_n = model.preference_logps(batch)
        loss = policy_preference_loss(chosen, chosen_n, rejected, rejected_n)
        with torch.no_grad():
            margin = length_normalized_logps(chosen, chosen_n) - length_normalized_logps(
                rejected, rejected_n
            )
        return loss, {"pl_accuracy": (margin > 0).float().mean(), "margin": margin.mean()}

    return loss_fn


def train_hpl(
    policy: Policy,
    preferences: Sequence[Preference],
    config: HPLConfig | None = None,
    *,
    engine: EngineConfig | TrainingEngine | None = None,
    max_steps: int | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> PolicyTrainResult:
    """Train ``policy`` (in place) on the training domains' ``preferences`` with ``L_out``.

    Arguments as in :func:`oodpl.models.trainers.sft.train_sft` (``engine`` holds the
    optimiser, micro-batch size in pairs, ``max_steps`` and seed).
    """
    policy = check_policy(policy)
    records = check_records(preferences, Preference, "preferences")
    config = config or HPLConfig()
    if not isinstance(config, HPLConfig):
        raise TypeError(f"config must be an HPLConfig, got {type(config).__name__}")
    trainer = resolve_engine(policy, engine)
    loop = run_loop(
        trainer,
        records,
        hpl_loss_fn(),
        policy.preference_collator(**config.collator_overrides()),
        max_steps=max_steps,
        log_path=log_path,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        resume_from=resume_from,
    )
    return PolicyTrainResult(policy, loop.history, trainer, loop.last_checkpoint)


__all__ = ["HPLConfig", "hpl_loss_fn", "train_hpl"]
