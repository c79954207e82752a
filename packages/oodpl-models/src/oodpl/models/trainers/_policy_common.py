"""Helpers shared by the policy trainers (SFT, HPL, meta-test, RJS, PPO) and the meta-trainer.

- input checks that name the argument (records, prompts, options);
- :func:`resolve_engine` / :func:`run_loop`: build a :class:`~oodpl.models.engine.TrainingEngine`
  (or take one already built) and run :func:`oodpl.models.engine.loop.train` with JSONL logging;
- :func:`sample_responses` / :func:`score_responses`: generation from a policy and scoring with a
  :class:`~oodpl.models.reward_model.RewardModel` or any ``reward_fn(prompts, responses)``;
- :func:`completion_nll` / :func:`policy_preference_metrics`: evaluation in eval mode, no grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oodpl.core.losses import policy_preference_loss, sft_loss
from oodpl.core.metrics import pl_accuracy
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig, TrainingEngine, build_engine
from oodpl.models.engine.loop import JsonlLogger, LoopResult, TrainerState
from oodpl.models.engine.loop import train as loop_train
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float] | torch.Tensor]
"""``reward_fn(prompts, responses) -> [N]`` scores, e.g. a synthetic benchmark's gold reward."""
RewardSource = RewardModel | RewardFn


# --- option dataclasses ---------------------------------------------------------------------
@dataclass(frozen=True)
class CollateOptions:
    """Tokenisation limits passed to the policy's collators (``None``: the model's limits).

    Attributes:
        max_length: longest prompt + response in tokens (causal) / per side (seq2seq).
        max_prompt_length: longest prompt in tokens.
    """

    max_length: int | None = None
    max_prompt_length: int | None = None

    def collator_overrides(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("max_length", "max_prompt_length"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, f"{type(self).__name__}.{name}", minimum=1)
                out[name] = value
        return out


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings for RJS and PPO rollouts (see :meth:`Policy.generate`).

    Attributes:
        max_new_tokens: longest sampled response (32).
        temperature: softmax temperature (1.0; 0 decodes greedily).
        top_p: nucleus mass (1.0 = plain sampling).
        prompts_per_call: prompts per ``generate`` call (32), bounding memory.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    prompts_per_call: int = 32

    def __post_init__(self) -> None:
        check_int(self.max_new_tokens, "GenerationOptions.max_new_tokens", minimum=1)
        check_int(self.prompts_per_call, "GenerationOptions.prompts_per_call", minimum=1)
        check_number(self.temperature, "GenerationOptions.temperature", minimum=0.0)
        check_number(self.top_p, "GenerationOptions.top_p", minimum=0.0, strict=True)
        if self.top_p > 1:
            raise ValueError(f"GenerationOptions.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class PolicyTrainResult:
    """What a policy trainer returns.

    Attributes:
        policy: the trained policy (the same object that was passed in, trained in place).
        history: one dict per optimizer step (``step``, ``loss``, ``lr``, ``grad_norm`` and the
            trainer's metrics), the records also written to ``log_path``.
        engine: the :class:`TrainingEngine` that trained it (e.g. to save its state).
        last_checkpoint: the last resumable state written, if any.
    """

    policy: Policy
    history: list[dict[str, Any]] = field(default_factory=list)
    engine: TrainingEngine | None = None
    last_checkpoint: Path | None = None

    def series(self, key: str) -> list[float]:
        """``[record[key] for record in history if key in record]``."""
        return [float(r[key]) for r in self.history if key in r and r[key] is not None]


# --- validation -----------------------------------------------------------------------------
def check_int(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(
    value: object, name: str, *, minimum: float | None = None, strict: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return number


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def check_records(records: object, kind: type, name: str) -> list[Any]:
    """``records`` as a non-empty list of ``kind`` (Completion or Preference); errors name it."""
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise TypeError(f"{name} must be a sequence of {kind.__name__} records")
    items = list(records)
    if not items:
        raise ValueError(f"{name} is empty: need at least one {kind.__name__}")
    for index, record in enumerate(items):
        if not isinstance(record, kind):
            raise TypeError(
                f"{name}[{index}] must be a {kind.__name__}, got {type(record).__name__}"
            )
    return items


def check_prompts(prompts: object, name: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of non-empty strings (records give their ``prompt``)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"{name} must be a non-empty sequence of prompt strings")
    out = []
    for index, item in enumerate(prompts):
        text = item.prompt if isinstance(item, (Completion, Preference)) else item
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name}[{index}] must be a non-empty string")
        out.append(text)
    return out


def check_policy(policy: object, name: str = "policy") -> Policy:
    if not isinstance(policy, Policy):
        raise TypeError(f"{name} must be an oodpl.models.Policy, got {type(policy).__name__}")
    return policy


# --- engine and loop --------------------------------------------------------------------------
def resolve_engine(
    module: nn.Module, engine: EngineConfig | TrainingEngine | None
) -> TrainingEngine:
    """``engine`` when it is a :class:`TrainingEngine` around ``module``; else build one from an
    :class:`EngineConfig` (default ``EngineConfig()``: torch backend)."""
    if isinstance(engine, TrainingEngine):
        if engine.module is not module:
            raise ValueError(
                f"engine trains a {type(engine.module).__name__} other than the model passed; "
                "build it around the same module or pass an EngineConfig"
            )
        return engine
    if engine is None:
        engine = EngineConfig()
    if not isinstance(engine, EngineConfig):
        raise TypeError(
            f"engine must be an EngineConfig, a TrainingEngine or None, got {type(engine).__name__}"
        )
    return build_engine(module, engine)


def run_loop(
    engine: TrainingEngine,
    dataset: Sequence[Any],
    loss_fn: Callable[[Any, Any], tuple[torch.Tensor, Mapping[str, Any]]],
    collate_fn: Callable[[list[Any]], Any],
    *,
    max_steps: int | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    extra_log: Mapping[str, Any] | None = None,
    batch_order: Callable[..., list[list[int]]] | None = None,
    trainer_state: TrainerState | None = None,
) -> LoopResult:
    """:func:`oodpl.models.engine.loop.train` with metrics appended to ``log_path`` as JSONL.

    ``max_steps`` counts the engine's optimizer steps (the loop trains *until* the engine has
    taken that many), so calling it again with a larger value continues training.
    ``extra_log`` entries (e.g. ``{"iteration": 2}``) are added to every record;
    ``batch_order`` replaces the loop's shuffled global batches (e.g. length buckets);
    ``trainer_state`` is saved with every checkpoint and restored on resume (the loop's).
    """
    logger = JsonlLogger(log_path) if log_path is not None else None
    extra = dict(extra_log or {})

    def on_log(record: dict[str, Any]) -> None:
        record.update(extra)
        if logger is not None:
            logger(record)

    result = loop_train(
        engine,
        dataset,
        loss_fn,
        collate_fn=collate_fn,
        max_steps=max_steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        resume_from=resume_from,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        batch_order=batch_order,
        trainer_state=trainer_state,
    )
    for record in result.history:
        record.update(extra)
    return result


def is_zero3(engine: EngineConfig | TrainingEngine | None) -> bool:
    """Whether ``engine`` (a config or a built engine) partitions the parameters (ZeRO-3)."""
    config = engine.config if isinstance(engine, TrainingEngine) else engine
    return (
        isinstance(config, EngineConfig)
        and config.backend == "deepspeed"
        and config.zero_stage == 3
    )


def forbid_zero3(engine: EngineConfig | TrainingEngine | None, trainer: str) -> None:
    """Generation reads whole weights from the policy: ZeRO-3 partitions them (check this before
    building the engine)."""
    if is_zero3(engine):
        raise ValueError(
            f"{trainer} generates from the policy between updates, which needs whole weights: "
            "use EngineConfig.zero_stage <= 2 (ZeRO-3 partitions the parameters)"
        )


# --- generation and scoring ---------------------------------------------------------------------
def sample_responses(
    policy: Policy,
    prompts: Sequence[str],
    n_samples: int,
    options: GenerationOptions,
    *,
    seed: int,
) -> list[list[str]]:
    """``out[i]`` = ``n_samples`` responses to ``prompts[i]`` (chunks of ``prompts_per_call``,
    chunk ``c`` seeded with ``seed + c``; empty responses are kept as ``""``)."""
    out: list[list[str]] = []
    step = options.prompts_per_call
    for chunk, start in enumerate(range(0, len(prompts), step)):
        out.extend(
            policy.generate(
                list(prompts[start : start + step]),
                max_new_tokens=options.max_new_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                num_return_sequences=n_samples,
                seed=seed + chunk,
            )
        )
    return out


def score_responses(
    reward: RewardSource,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 32,
    collator_overrides: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``r(x_i, y_i)`` as a float32 CPU tensor ``[N]``: a :class:`RewardModel` (eval mode, no
    grad, batches of ``batch_size``) or a ``reward_fn(prompts, responses)``."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if isinstance(reward, RewardModel):
        collator = reward.completion_collator(**dict(collator_overrides or {}))
        records = [{"prompt": p, "response": y} for p, y in zip(prompts, responses, strict=True)]
        batches = (
            collator(records[i : i + batch_size]) for i in range(0, len(records), batch_size)
        )
        scores = reward.compute_rewards(batches)["rewards"]
    elif callable(reward):
        scores = torch.as_tensor(reward(list(prompts), list(responses)), dtype=torch.float32)
    else:
        raise TypeError(
            "reward_model must be a RewardModel or a callable reward_fn(prompts, responses), "
            f"got {type(reward).__name__}"
        )
    scores = scores.detach().float().cpu().reshape(-1)
    if scores.numel() != len(prompts):
        raise ValueError(f"reward returned {scores.numel()} scores for {len(prompts)} responses")
    if not bool(torch.isfinite(scores).all()):
        raise FloatingPointError("reward returned non-finite scores")
    return scores


# --- evaluation -------------------------------------------------------------------------------
def _batches(collator: Callable[[list[Any]], Any], records: Sequence[Any], size: int):
    check_int(size, "batch_size", minimum=1)
    return (collator(list(records[i : i + size])) for i in range(0, len(records), size))


def completion_nll(
    policy: Policy,
    completions: Sequence[Completion],
    *,
    batch_size: int = 32,
    normalize: str = "token",
    collate: CollateOptions | None = None,
) -> float:
    """Held-out negative log-likelihood :func:`oodpl.core.losses.sft_loss` over all records."""
    records = check_records(completions, Completion, "completions")
    collator = policy.completion_collator(**(collate or CollateOptions()).collator_overrides())
    out = policy.compute_logps(_batches(collator, records, batch_size))
    return float(sft_loss(out["logps"].double(), out["n_tokens"], normalize=normalize))


def policy_preference_metrics(
    policy: Policy,
    preferences: Sequence[Preference],
    *,
    batch_size: int = 32,
    collate: CollateOptions | None = None,
) -> dict[str, float]:
    """``{"pl_loss", "pl_accuracy", "pl_ties"}`` of the policy on ``preferences`` (METHODS §3:
    ``L_out`` and ``mean 1[ℓ̄(y_w) > ℓ̄(y_l)]``)."""
    records = check_records(preferences, Preference, "preferences")
    collator = policy.preference_collator(**(collate or CollateOptions()).collator_overrides())
    out = policy.compute_logps(_batches(collator, records, batch_size))
    args = (out["chosen_logps"], out["chosen_n_tokens"], out["rejected_logps"])
    args = (*args, out["rejected_n_tokens"])
    accuracy = pl_accuracy(*args)
    loss = policy_preference_loss(*args)
    return {
        "pl_loss": float(loss),
        "pl_accuracy": accuracy.accuracy,
        "pl_ties": float(accuracy.n_ties),
    }


__all__ = [
    "CollateOptions",
    "GenerationOptions",
    "PolicyTrainResult",
    "RewardFn",
    "RewardSource",
    "check_policy",
    "check_prompts",
    "check_records",
    "completion_nll",
    "policy_preference_metrics",
    "resolve_engine",
    "run_loop",
    "sample_responses",
    "score_responses",
]
