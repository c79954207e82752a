"""OODPL meta-test: adapt the SFT policy to the test domain with the frozen meta-learned reward
([OODPL] Alg. 2, METHODS §3).

With ``φ*`` frozen, minimise the reward-weighted regression loss ([OODPL] Eq. 10)::

    L_in^test(θ; φ*) = −(1/B) Σ_b w_b ℓ̄_θ(x_b, y_b),   w = B·softmax(r_φ*(x, y)/β)
                                                        (or min(exp(r/β), w_max))

on the test domain's fine-tuning data, starting from the SFT policy, and keep the checkpoint with
the lowest training loss. The reward model is frozen, so each record's reward is computed once
before training (eval mode, no grad). Selection: every ``eval_every`` optimizer steps (and at step
0 and at the end) the loss is evaluated on a fixed *selection set* of the training records (fixed
minibatches, eval mode); the engine state of the best step is restored at the end with
``engine.load_state`` — the same mechanism on the torch and DeepSpeed backends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oodpl.core.losses import RWR_WEIGHTINGS, reward_weighted_regression_loss, reward_weights
from oodpl.core.records import Completion
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.engine.loop import JsonlLogger, checkpoint_name
from oodpl.models.policy import Policy
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    PolicyTrainResult,
    RewardSource,
    check_choice,
    check_int,
    check_number,
    check_policy,
    check_records,
    resolve_engine,
    run_loop,
    score_responses,
)


@dataclass(frozen=True)
class MetaTestConfig(CollateOptions):
    """Settings of :func:`train_meta_test` (optimiser, batch size, steps in ``EngineConfig``).

    Attributes:
        beta: reward controlling factor ``β`` (1.0); weighting: ``"softmax"`` or
            ``"clipped_exp"``; max_weight: the clip ``w_max`` of ``"clipped_exp"`` (20).
        eval_every: score the selection loss every this many optimizer steps (10; 0 = only at
            step 0 and at the end).
        selection_size: records (a seeded random subset) in the selection set (256; None = all).
        selection_batch_size: minibatch size of the selection loss (32).
        reward_batch_size: batch size when scoring the records with the reward model (32).
        seed: seed of the selection subset (0).
    """

    beta: float = 1.0
    weighting: str = "softmax"
    max_weight: float = 20.0
    eval_every: int = 10
    selection_size: int | None = 256
    selection_batch_size: int = 32
    reward_batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_number(self.beta, f"{name}.beta", minimum=0.0, strict=True)
        check_number(self.max_weight, f"{name}.max_weight", minimum=0.0, strict=True)
        check_choice(self.weighting, f"{name}.weighting", RWR_WEIGHTINGS)
        check_int(self.eval_every, f"{name}.eval_every", minimum=0)
        if self.selection_size is not None:
            check_int(self.selection_size, f"{name}.selection_size", minimum=1)
        check_int(self.selection_batch_size, f"{name}.selection_batch_size", minimum=1)
        check_int(self.reward_batch_size, f"{name}.reward_batch_size", minimum=1)
        check_int(self.seed, f"{name}.seed", minimum=0)
        self.collator_overrides()


@dataclass
class MetaTestResult(PolicyTrainResult):
    """:class:`PolicyTrainResult` plus the selection: ``selection`` = ``[{"step",
    "selection_loss"}]`` per scored checkpoint, the chosen ``best_step`` / ``best_loss`` (the
    policy and engine hold that checkpoint), and the frozen ``rewards`` of the records."""

    selection: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_loss: float = float("inf")
    rewards: torch.Tensor | None = None


def rwr_loss_fn(config: MetaTestConfig):
    """``loss_fn(model, {"batch", "rewards"}) -> (L_in^test, metrics)`` for the engine loop."""

    def loss_fn(model: Any, item: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        logps, n_tokens = model.sequence_logps(item["batch"])
        rewards = item["rewards"].to(logps.device)
        loss = reward_weighted_regression_loss(
            logps,
            n_tokens,
            rewards,
            beta=config.beta,
            weighting=config.weighting,
            max_weight=config.max_weight,
        )
        with torch.no_grad():
            weights = reward_weights(
                rewards, beta=config.beta, weighting=config.weighting, max_weight=config.max_weight
            )
        return loss, {"max_weight": weights.max(), "mean_reward": rewards.mean()}

    return loss_fn


def train_meta_test(
    policy: Policy,
    reward_model: RewardSource,
    completions: Sequence[Completion],
    config: MetaTestConfig | None = None,
    *,
    engine: EngineConfig | TrainingEngine | None = None,
    max_steps: int | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
) -> MetaTestResult:
    """Adapt ``policy`` (in place; the SFT policy) to the test domain with the frozen reward.

    Args:
        policy: the SFT policy, trained in place; ends at the selected checkpoint.
        reward_model: the frozen meta-learned :class:`RewardModel` ``r_φ*`` (never updated), or a
            ``reward_fn(prompts, responses)``.
        completions: the test domain's fine-tuning data.
        config: :class:`MetaTestConfig`.
        engine: :class:`EngineConfig` or a built :class:`TrainingEngine` (torch or DeepSpeed).
        max_steps: optimizer steps (default ``engine.config.max_steps``).
        log_path: JSONL, one record per step; selection scores are written with
            ``"selection": true``.
        checkpoint_dir: where the candidate states go (kept); default a temporary directory that
            is removed afterwards.
    """
    policy = check_policy(policy)
    records = check_records(completions, Completion, "completions")
    config = config or MetaTestConfig()
    if not isinstance(config, MetaTestConfig):
        raise TypeError(f"config must be a MetaTestConfig, got {type(config).__name__}")
    rewards = score_responses(
        reward_model,
        [r.prompt for r in records],
        [r.response for r in records],
        batch_size=config.reward_batch_size,
        collator_overrides=config.collator_overrides(),
    )
    trainer = resolve_engine(policy, engine)
    collator = policy.completion_collator(**config.collator_overrides())

    def collate(items: list[tuple[Completion, float]]) -> dict[str, Any]:
        batch = collator([record for record, _ in items])
        return {"batch": batch, "rewards": torch.tensor([r for _, r in items])}

    dataset = list(zip(records, rewards.tolist(), strict=True))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed))
    chosen = order.tolist()[: config.selection_size or len(dataset)]
    size = config.selection_batch_size
    selection_batches = [
        trainer.to_device(collate([dataset[i] for i in chosen[start : start + size]]))
        for start in range(0, len(chosen), size)
    ]
    loss_fn = rwr_loss_fn(config)
    result = MetaTestResult(policy, engine=trainer, rewards=rewards)
    owned = checkpoint_dir is None
    root = Path(tempfile.mkdtemp(prefix="oodpl-meta-test-") if owned else checkpoint_dir)
    best: dict[str, Any] = {"path": None}

    def score(path: Path, step: int) -> None:
        module = trainer.module
        was_training = module.training
        module.eval()
        with torch.no_grad():
            losses = [float(loss_fn(trainer.model, b)[0]) for b in selection_batches]
        module.train(was_training)
        loss = sum(losses) / len(losses)
        result.selection.append({"step": step, "selection_loss": loss})
        if log_path is not None and trainer.is_main:
            JsonlLogger(log_path)({"step": step, "selection_loss": loss, "selection": True})
        previous = best["path"]
        if loss < result.best_loss:
            result.best_loss, result.best_step, best["path"] = loss, step, path
            stale = previous
        else:
            stale = path
        if owned and stale is not None and trainer.is_main:
            shutil.rmtree(stale, ignore_errors=True)

    try:
        start_step = trainer.global_step
        initial = trainer.save_state(root / checkpoint_name(start_step))
        score(initial, start_step)
        loop = run_loop(
            trainer,
            dataset,
            loss_fn,
            collate,
            max_steps=max_steps,
            log_path=log_path,
            checkpoint_dir=root,
            checkpoint_every=config.eval_every,
            on_checkpoint=score,
        )
        result.history = loop.history
        if result.best_step != trainer.global_step:
            trainer.load_state(best["path"])
        result.last_checkpoint = None if owned else best["path"]
    finally:
        trainer.barrier()
        if owned and trainer.is_main:
            shutil.rmtree(root, ignore_errors=True)
    return result


__all__ = ["MetaTestConfig", "MetaTestResult", "rwr_loss_fn", "train_meta_test"]
