"""DPO-family policy training with a frozen reference (METHODS §2; [DPORM]).

Per pair, with summed response log-probabilities (:meth:`Policy.preference_logps`) and
``u = (logπ_θ(y_w) − logπ_ref(y_w)) − (logπ_θ(y_l) − logπ_ref(y_l))``, ``h = βu``, the loss is
:func:`oodpl.core.losses.dpo_loss` of ``loss_type``: sigmoid ``−log σ(h)``, label-smoothed
``−(1−ε)log σ(h) − ε log σ(−h)``, robust ``[−(1−ε)log σ(h) + ε log σ(−h)]/(1−2ε)``, IPO
``(h/β − 1/(2β))²``, hinge ``max(0, 1−h)``; RPO adds ``α·(−logπ_θ(y_w)/|y_w|)``.

The reference ``π_ref`` is, by ``DPOConfig.reference``:

- ``"precomputed"`` (default): ``logπ_ref`` of every training pair computed once before training
  (eval mode, no grad) and carried in the batches — no second model in memory, and it works with
  ZeRO-3 because it runs before the engine partitions the policy;
- ``"model"``: a frozen eval-mode copy run on every batch (no grad).

Either way the reference is ``reference_model`` if given, else the policy as passed in (so when
resuming, pass the same *initial* policy: the loop restores the trained weights from the state).
Logged per step: ``loss``, ``reward_accuracy`` (``mean 1[r_dpo(y_w) > r_dpo(y_l)]``, the DPORM
accuracy on the batch), ``chosen_reward``, ``rejected_reward`` and ``margin`` (means of the
detached implicit rewards ``β(logπ_θ − logπ_ref)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oodpl.core.losses import DPO_LOSS_TYPES, dpo_loss
from oodpl.core.records import Preference
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.policy import Policy
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    PolicyTrainResult,
    check_choice,
    check_int,
    check_policy,
    check_records,
    resolve_engine,
    run_loop,
)

REFERENCE_MODES: tuple[str, ...] = ("precomputed", "model")
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")


@dataclass(frozen=True)
class DPOConfig(CollateOptions):
    """Settings of :func:`train_dpo` (optimiser, batch size, steps and seed: ``EngineConfig``).

    Attributes:
        beta: ``β > 0`` ([DPORM] uses 0.03).
        loss_type: one of :data:`oodpl.core.losses.DPO_LOSS_TYPES`.
        label_smoothing: ε for ``"label_smoothed"`` ([0, 1]) or ``"robust"`` ([0, ½)); else 0.
        rpo_alpha: weight ``α >= 0`` of the RPO term.
        reference: ``"precomputed"`` or ``"model"`` (module docstring).
        reference_batch_size: pairs per forward when precomputing reference log-probs.
        max_length, max_prompt_length: collator limits (``None``: the model's).
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    reference: str = "precomputed"
    reference_batch_size: int = 32

    def __post_init__(self) -> None:
        check_choice(self.loss_type, "DPOConfig.loss_type", DPO_LOSS_TYPES)
        check_choice(self.reference, "DPOConfig.reference", REFERENCE_MODES)
        check_int(self.reference_batch_size, "DPOConfig.reference_batch_size", minimum=1)
        probe = torch.zeros(1)
        try:  # the loss's own validation of beta / label_smoothing / rpo_alpha
            dpo_loss(probe, probe, probe, probe, **self.loss_kwargs(), chosen_n_tokens=probe + 1)
        except (TypeError, ValueError) as err:
            raise type(err)(f"DPOConfig: {err}") from None
        self.collator_overrides()

    def loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`oodpl.core.losses.dpo_loss`."""
        return {
            "beta": self.beta,
            "loss_type": self.loss_type,
            "label_smoothing": self.label_smoothing,
            "rpo_alpha": self.rpo_alpha,
        }


@dataclass(frozen=True)
class ReferencedPair:
    """A training pair with its precomputed reference log-probabilities (summed)."""

    record: Preference
    reference_chosen_logps: float
    reference_rejected_logps: float


def precompute_reference_logps(
    reference: Policy, records: Sequence[Preference], config: DPOConfig
) -> list[ReferencedPair]:
    """``logπ_ref(y_w|x), logπ_ref(y_l|x)`` of every pair (eval mode, no grad, float64 sums)."""
    collator = reference.preference_collator(**config.collator_overrides())
    size = config.reference_batch_size
    batches = (collator(list(records[i : i + size])) for i in range(0, len(records), size))
    out = reference.compute_logps(batches)
    chosen, rejected = out["chosen_logps"].tolist(), out["rejected_logps"].tolist()
    return [
        ReferencedPair(record, c, r) for record, c, r in zip(records, chosen, rejected, strict=True)
    ]


def dpo_loss_fn(config: DPOConfig, reference: Policy | None = None):
    """``loss_fn(model, pair_batch) -> (loss, metrics)`` for the engine loop.

    Reference log-probs come from the batch (``reference_chosen_logps`` /
    ``reference_rejected_logps``) or, when ``reference`` is given, from that frozen model.
    """
    kwargs = config.loss_kwargs()

    def loss_fn(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        batch = dict(batch)
        stored = [batch.pop(key, None) for key in REFERENCE_KEYS]
        chosen, chosen_n, rejected, _ = model.preference_logps(batch)
        if reference is not None:
            with torch.no_grad():
                ref_chosen, _, ref_rejected, _ = reference.preference_logps(batch)
        elif stored[0] is not None and stored[1] is not None:
            ref_chosen, ref_rejected = stored
        else:
            raise ValueError(
                "the batch holds no reference log-probs and no reference model was given"
            )
        dtype = chosen.dtype
        out = dpo_loss(
            chosen,
            rejected,
            ref_chosen.to(chosen.device, dtype),
            ref_rejected.to(chosen.device, dtype),
            chosen_n_tokens=chosen_n,
            **kwargs,
        )
        return out.loss, {
            "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float().mean(),
            "chosen_reward": out.chosen_rewards.mean(),
            "rejected_reward": out.rejected_rewards.mean(),
            "margin": out.margins.mean(),
        }

    return loss_fn


def train_dpo(
    policy: Policy,
    preferences: Sequence[Preference],
    config: DPOConfig | None = None,
    *,
    reference_model: Policy | None = None,
    engine: EngineConfig | TrainingEngine | None = None,
    max_steps: int | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> PolicyTrainResult:
    """Train ``policy`` (in place) on ``preferences`` with a DPO-family loss.

    Args:
        policy: the policy to train (LoRA [+ LM head] or all weights).
        preferences: training pairs.
        config: :class:`DPOConfig` (default: sigmoid DPO, β = 0.1, precomputed reference).
        reference_model: ``π_ref``; default the policy as passed in (before training).
        engine: an :class:`EngineConfig` or a :class:`TrainingEngine` built around ``policy``.
        max_steps, log_path, checkpoint_dir, checkpoint_every, keep_last, resume_from: as in
            :func:`oodpl.models.trainers.sft.train_sft`.
    """
    policy = check_policy(policy)
    if reference_model is not None:
        check_policy(reference_model, "reference_model")
    records = check_records(preferences, Preference, "preferences")
    config = config or DPOConfig()
    if not isinstance(config, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
    if (
        isinstance(engine, TrainingEngine)
        and reference_model is None
        and engine.config.backend == "deepspeed"
        and engine.config.zero_stage == 3
    ):
        raise ValueError(
            "the engine already partitions the policy (ZeRO-3): pass reference_model, or pass "
            "an EngineConfig so the reference is taken before partitioning"
        )
    reference: Policy | None = None
    if config.reference == "precomputed":
        source = reference_model if reference_model is not None else policy
        dataset: list[Any] = precompute_reference_logps(source, records, config)
    else:
        dataset = records
        reference = (reference_model or policy).reference_copy()
    trainer = resolve_engine(policy, engine)
    if reference is not None:
        reference.to(trainer.device)
    collator = policy.preference_collator(**config.collator_overrides())

    def collate(items: list[Any]) -> dict[str, torch.Tensor]:
        if config.reference == "model":
            return collator(items)
        batch = collator([item.record for item in items])
        batch["reference_chosen_logps"] = torch.tensor(
            [item.reference_chosen_logps for item in items], dtype=torch.float64
        )
        batch["reference_rejected_logps"] = torch.tensor(
            [item.reference_rejected_logps for item in items], dtype=torch.float64
        )
        return batch

    loop = run_loop(
        trainer,
        dataset,
        dpo_loss_fn(config, reference),
        collate,
        max_steps=max_steps,
        log_path=log_path,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        resume_from=resume_from,
    )
    return PolicyTrainResult(policy, loop.history, trainer, loop.last_checkpoint)


__all__ = [
    "REFERENCE_MODES",
    "DPOConfig",
    "ReferencedPair",
    "dpo_loss_fn",
    "precompute_reference_logps",
    "train_dpo",
]
