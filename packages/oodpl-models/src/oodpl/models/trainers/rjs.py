"""Rejection-sampling fine-tuning (RJS; [MORE] alignment protocol, METHODS §5).

Each iteration ``t``: sample ``n`` responses per prompt from the current policy
(:meth:`Policy.generate`), score them with the reward model, keep the best one per prompt,
``y*_i = argmax_j r(x_i, y_ij)``, then fine-tune on ``{(x_i, y*_i)}`` with the SFT loss
(:func:`oodpl.core.losses.sft_loss`) for ``steps_per_iteration`` optimizer steps on the training
engine (one engine for all iterations: the optimiser state and the schedule carry over). Empty
samples (an immediate eos) are skipped; a prompt whose samples are all empty is left out of that
iteration. The DeepSpeed backend works up to ZeRO-2 (generation needs whole weights).

Resumable: with ``checkpoint_dir`` the engine loop saves a state every ``checkpoint_every`` steps
and at the end of every round, carrying the round, its best-of-n set and the round statistics
(:mod:`oodpl.models.trainers.sampling_checkpoint`); ``resume_from`` continues in the middle of a
round without sampling again, and ends with the uninterrupted run's weights (bit for bit on CPU;
on GPU, as far as generation and training kernels are deterministic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodpl.core.losses import SFT_NORMALIZATIONS
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.engine.loop import JsonlLogger
from oodpl.models.policy import Policy
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    GenerationOptions,
    PolicyTrainResult,
    RewardSource,
    check_choice,
    check_int,
    check_policy,
    check_prompts,
    forbid_zero3,
    resolve_engine,
    run_loop,
    sample_responses,
    score_responses,
)
from oodpl.models.trainers.sampling_checkpoint import (
    RoundState,
    load_round_state,
    rjs_fingerprint,
    rjs_round_data,
)
from oodpl.models.trainers.sft import sft_loss_fn


@dataclass(frozen=True)
class RJSConfig(CollateOptions):
    """Settings of :func:`train_rjs` (optimiser, micro-batch size, seed: ``EngineConfig``).

    Attributes:
        iterations: sample → select → fine-tune rounds (1).
        n_samples: responses sampled per prompt (4, as in [MORE]).
        steps_per_iteration: optimizer steps of SFT on the selected responses per round (50).
        normalize: SFT loss normalisation, ``"token"`` or ``"sequence"``.
        generation: :class:`GenerationOptions` (max_new_tokens, temperature, top_p).
        reward_batch_size: batch size when scoring samples with a reward model (32).
        evaluate_final: sample once more after the last round and report its rewards.
        seed: sampling seed (round ``t`` uses ``seed + 1000 t``).
    """

    iterations: int = 1
    n_samples: int = 4
    steps_per_iteration: int = 50
    normalize: str = "token"
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    reward_batch_size: int = 32
    evaluate_final: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_int(self.iterations, f"{name}.iterations", minimum=1)
        check_int(self.n_samples, f"{name}.n_samples", minimum=1)
        check_int(self.steps_per_iteration, f"{name}.steps_per_iteration", minimum=1)
        check_int(self.reward_batch_size, f"{name}.reward_batch_size", minimum=1)
        check_int(self.seed, f"{name}.seed", minimum=0)
        check_choice(self.normalize, f"{name}.normalize", SFT_NORMALIZATIONS)
        if not isinstance(self.generation, GenerationOptions):
            raise TypeError(f"{name}.generation must be a GenerationOptions")
        self.collator_overrides()


@dataclass
class RJSResult(PolicyTrainResult):
    """:class:`PolicyTrainResult` (history: SFT steps, each with its ``iteration``) plus
    ``iterations``: per round ``{"iteration", "mean_reward" (all samples), "best_reward" (mean
    of the kept ones), "n_selected", "n_empty", "trained"}``; with ``evaluate_final`` the last
    entry scores samples of the final policy (``trained: False``)."""

    iterations: list[dict[str, Any]] = field(default_factory=list)


def best_of_n(
    prompts: Sequence[str],
    samples: Sequence[Sequence[str]],
    reward: RewardSource,
    *,
    batch_size: int = 32,
    collator_overrides: dict[str, Any] | None = None,
) -> tuple[list[dict[str, str]], dict[str, float]]:
    """The best non-empty sample per prompt by reward, and statistics of the round."""
    flat = [(i, y) for i, ys in enumerate(samples) for y in ys if y]
    n_empty = sum(len(ys) for ys in samples) - len(flat)
    if not flat:
        raise ValueError("every sampled response is empty: raise max_new_tokens or temperature")
    scores = score_responses(
        reward,
        [prompts[i] for i, _ in flat],
        [y for _, y in flat],
        batch_size=batch_size,
        collator_overrides=collator_overrides,
    ).tolist()
    best: dict[int, tuple[float, str]] = {}
    for (i, response), score in zip(flat, scores, strict=True):
        if i not in best or score > best[i][0]:
            best[i] = (score, response)
    selected = [{"prompt": prompts[i], "response": best[i][1]} for i in sorted(best)]
    stats = {
        "mean_reward": math.fsum(scores) / len(scores),
        "best_reward": math.fsum(s for s, _ in best.values()) / len(best),
        "n_selected": float(len(selected)),
        "n_empty": float(n_empty),
    }
    return selected, stats


def train_rjs(
    policy: Policy,
    reward_model: RewardSource,
    prompts: Sequence[str | Completion | Preference],
    config: RJSConfig | None = None,
    *,
    engine: EngineConfig | TrainingEngine | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> RJSResult:
    """Rejection-sampling fine-tuning of ``policy`` (in place) on ``prompts``.

    Args:
        policy: the policy to sample from and train.
        reward_model: a :class:`RewardModel` (eval mode, never updated) or a
            ``reward_fn(prompts, responses)``.
        prompts: prompt strings (or records, whose ``prompt`` is used).
        config: :class:`RJSConfig`.
        engine: :class:`EngineConfig` or a built :class:`TrainingEngine` (torch, or DeepSpeed up
            to ZeRO-2).
        log_path: JSONL: SFT steps (with ``iteration``) and one ``{"rjs_round": true, ...}``
            record per round.
        checkpoint_dir, checkpoint_every, keep_last: engine states every ``checkpoint_every``
            optimizer steps and at the end of every round, with the round's bookkeeping
            (:mod:`oodpl.models.trainers.sampling_checkpoint`); ``keep_last`` prunes older ones.
        resume_from: a state directory, or a checkpoint root with a ``latest`` file: continue
            that run (the same settings; ``iterations`` may grow). ``result.iterations`` then
            holds the saved rounds too, ``result.history`` only the steps taken now.
    """
    policy = check_policy(policy)
    texts = check_prompts(prompts)
    config = config or RJSConfig()
    if not isinstance(config, RJSConfig):
        raise TypeError(f"config must be an RJSConfig, got {type(config).__name__}")
    forbid_zero3(engine, "RJS")
    state = RoundState("rjs", rjs_fingerprint(config, texts))
    state_dir = load_round_state(resume_from, state) if resume_from is not None else None
    trainer = resolve_engine(policy, engine)
    logger = JsonlLogger(log_path) if log_path is not None and trainer.is_main else None
    collator = policy.completion_collator(**config.collator_overrides())
    result = RJSResult(policy, engine=trainer)
    batch_size = config.reward_batch_size
    rounds = config.iterations + int(config.evaluate_final)
    first = 0
    if state_dir is not None:
        if state.round >= config.iterations:
            raise ValueError(
                f"{state_dir}: the checkpoint is in round {state.round}, past the run's "
                f"iterations={config.iterations}"
            )
        selected, result.iterations = rjs_round_data(state, state_dir / "extra.json")
        first = state.round
    for iteration in range(first, rounds):
        if iteration != first or state_dir is None:
            samples = sample_responses(
                policy,
                texts,
                config.n_samples,
                config.generation,
                seed=config.seed + 1000 * iteration,
            )
            selected, stats = best_of_n(
                texts,
                samples,
                reward_model,
                batch_size=batch_size,
                collator_overrides=config.collator_overrides(),
            )
            trained = iteration < config.iterations
            entry = {"iteration": iteration, **stats, "trained": trained}
            result.iterations.append(entry)
            if logger is not None:
                logger({**entry, "rjs_round": True})
            if not trained:
                break
            batch = trainer.config.global_batch_size(trainer.world_size)
            if len(selected) < batch:
                raise ValueError(
                    f"RJS round {iteration} kept {len(selected)} responses, fewer than one global "
                    f"batch of {batch}: use more prompts or a smaller EngineConfig.micro_batch_size"
                )
            state.begin(
                iteration, trainer.global_step, selected=selected, rounds=list(result.iterations)
            )
        loop = run_loop(
            trainer,
            selected,
            sft_loss_fn(config.normalize),
            collator,
            max_steps=state.round_start_step + config.steps_per_iteration,
            log_path=log_path,
            extra_log={"iteration": iteration},
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            keep_last=keep_last,
            resume_from=state_dir if iteration == first else None,
            trainer_state=state,
        )
        result.history.extend(loop.history)
        result.last_checkpoint = loop.last_checkpoint or result.last_checkpoint
    return result


__all__ = ["RJSConfig", "RJSResult", "best_of_n", "train_rjs"]
