"""Compact PPO for the PPO(tr)/PPO(te) baselines ([OODPL]; METHODS §3): the two differ only in the
``prompts`` passed (training- or test-domain prompts).

Per iteration: sample one response per prompt (a rollout batch), score it with the reward model,
and take per-token quantities over the response tokens ``t = 0..T−1`` of each sequence:

- rewards ([Ziegler et al. 2019] KL shaping): ``r_t = −β_kl (logπ_old(y_t) − logπ_ref(y_t))``,
  plus the reward-model score ``R(x, y)`` at the last token ``t = T−1``;
- GAE (Schulman et al. 2016): ``δ_t = r_t + γ V_{t+1} − V_t`` (``V_T = 0``),
  ``A_t = Σ_l (γλ)^l δ_{t+l}``, returns ``G_t = A_t + V_t``; advantages whitened over the batch;
- clipped policy objective: ``L_π = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε))`` with
  ``ρ_t = exp(logπ_θ(y_t) − logπ_old(y_t))``;
- clipped value loss: ``L_V = ½ mean_t max((V_t − G_t)², (V_old,t + clip(V_t − V_old,t, ±ε_V) −
  G_t)²)`` with a value head ``V(s_t) = w·h_t + b`` on the policy's hidden state that predicts
  ``y_t`` (:class:`PolicyWithValueHead`; the trunk is shared);

then ``ppo_epochs`` passes of minibatch updates of ``L_π + c_V L_V`` on the training engine (torch,
or DeepSpeed up to ZeRO-2: rollouts need whole weights). Means are over response tokens.
Dropout is off throughout (eval mode), so ``ρ = 1`` at the first update of every rollout.
The reference ``π_ref`` is a frozen copy of the policy as passed in (or ``reference_model``).
Responses are re-tokenised from the decoded samples (eos appended, as for the reward model).

Resumable: with ``checkpoint_dir`` an engine state (policy + value head, optimizer, schedule,
RNG) is saved after every ``checkpoint_every``-th iteration and after the last, with the
iteration count, the prompt-order generator's state, the unused prompt order and the iteration
records (:mod:`oodpl.models.trainers.sampling_checkpoint`); ``resume_from`` continues from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from oodpl.core.records import Completion, Preference
from oodpl.models.backbone import (
    head_dtype,
    hidden_states,
    output_logits,
    scored_sequence,
    validate_batch,
)
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.engine.loop import JsonlLogger, check_checkpointing
from oodpl.models.policy import Policy
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    GenerationOptions,
    PolicyTrainResult,
    RewardSource,
    check_int,
    check_number,
    check_policy,
    check_prompts,
    forbid_zero3,
    resolve_engine,
    sample_responses,
    score_responses,
)
from oodpl.models.trainers.ppo_objective import (
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
)
from oodpl.models.trainers.sampling_checkpoint import (
    RoundState,
    load_round_state,
    ppo_data,
    ppo_fingerprint,
    save_engine_checkpoint,
)

Tensor = torch.Tensor


# --- the actor-critic module --------------------------------------------------------------------
def left_align(flat: Tensor, targets_mask: Tensor, width: int | None = None) -> Tensor:
    """Scatter response-token values ``[N]`` (row-major over ``targets_mask``) to ``[B, width]``."""
    columns = targets_mask.long().cumsum(dim=1) - 1
    width = width or int(targets_mask.sum(dim=1).max())
    out = flat.new_zeros((targets_mask.shape[0], width))
    rows = torch.arange(targets_mask.shape[0], device=flat.device)[:, None].expand_as(columns)
    out[rows[targets_mask], columns[targets_mask]] = flat
    return out


def response_token_mask(batch: dict[str, Tensor], width: int | None = None) -> Tensor:
    """``[B, width]`` left-aligned mask of each row's response tokens."""
    counts = batch["response_mask"].sum(dim=1)
    width = width or int(counts.max())
    return torch.arange(width, device=counts.device)[None, :] < counts[:, None]


class PolicyWithValueHead(nn.Module):
    """A :class:`Policy` plus a value head ``V(s_t) = w·h_t + b`` on the hidden state ``h_t`` that
    predicts response token ``y_t`` (the trunk, LoRA included, is shared with the policy)."""

    def __init__(self, policy: Policy, *, seed: int = 0) -> None:
        super().__init__()
        self.policy = check_policy(policy)
        hidden = int(policy.lm.config.get_text_config().hidden_size)
        generator = torch.Generator().manual_seed(seed)
        self.value_head = nn.Linear(hidden, 1).to(policy.device)
        with torch.no_grad():
            self.value_head.weight.copy_(torch.randn(1, hidden, generator=generator) * 1e-2)
            self.value_head.bias.zero_()

    def token_logps_and_values(
        self, batch: dict[str, Tensor], width: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Left-aligned ``(logπ(y_t), V(s_t))`` ``[B, width]`` from one forward pass."""
        policy = self.policy
        validate_batch(batch, seq2seq=policy.seq2seq)
        targets_mask = batch["response_mask"][:, 1:].bool()
        hidden = hidden_states(policy.model, batch)[:, :-1][targets_mask]
        if policy.logits_from_hidden:
            logits = output_logits(policy.model, hidden)
            ids, _ = scored_sequence(batch)
            logps = torch.log_softmax(logits.to(head_dtype(logits.dtype)), dim=-1)
            picked = logps.gather(-1, ids[:, 1:][targets_mask][:, None]).squeeze(-1)
        else:  # an architecture whose head transform the shortcut misses: the policy's own path
            picked, _ = policy.token_logps(batch)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return left_align(picked, targets_mask, width), left_align(values, targets_mask, width)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.token_logps_and_values(batch)


@dataclass(frozen=True)
class PPOConfig(CollateOptions):
    """Settings of :func:`train_ppo` (optimiser, minibatch size = ``micro_batch_size``,
    accumulation, seed: ``EngineConfig``).

    Attributes:
        iterations: rollout batches (20). rollout_size: prompts per rollout (16).
        ppo_epochs: passes of minibatch updates over each rollout (2).
        kl_coef: ``β_kl`` (0.05). gamma, lam: GAE ``γ`` (1.0) and ``λ`` (0.95).
        clip_range: ``ε`` (0.2). value_clip_range: ``ε_V`` (0.2). value_coef: ``c_V`` (0.5).
        whiten_advantages: normalise advantages over the rollout (True).
        generation: :class:`GenerationOptions`. reward_batch_size: scoring batch size (32).
        seed: prompt order and sampling seed (0).
    """

    iterations: int = 20
    rollout_size: int = 16
    ppo_epochs: int = 2
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    value_coef: float = 0.5
    whiten_advantages: bool = True
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    reward_batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("iterations", "rollout_size", "ppo_epochs", "reward_batch_size"):
            check_int(getattr(self, key), f"{name}.{key}", minimum=1)
        check_int(self.seed, f"{name}.seed", minimum=0)
        for key in ("kl_coef", "value_coef"):
            check_number(getattr(self, key), f"{name}.{key}", minimum=0.0)
        for key in ("clip_range", "value_clip_range"):
            check_number(getattr(self, key), f"{name}.{key}", minimum=0.0, strict=True)
        for key in ("gamma", "lam"):
            if not 0.0 <= check_number(getattr(self, key), f"{name}.{key}") <= 1.0:
                raise ValueError(f"{name}.{key} must be in [0, 1], got {getattr(self, key)}")
        if not isinstance(self.generation, GenerationOptions):
            raise TypeError(f"{name}.generation must be a GenerationOptions")
        self.collator_overrides()


@dataclass
class PPOResult(PolicyTrainResult):
    """:class:`PolicyTrainResult` whose ``history`` holds one record per iteration: ``score``
    (mean reward-model score of the rollouts), ``kl`` (mean summed ``logπ_old − logπ_ref``),
    ``policy_loss``, ``value_loss``, ``clip_fraction``, ``approx_kl``, ``response_tokens``;
    plus the trained ``actor_critic`` (policy + value head)."""

    actor_critic: PolicyWithValueHead | None = None


@dataclass
class Rollout:
    """One rollout batch: the collated sequences and their left-aligned per-token tensors."""

    batch: dict[str, Tensor]
    mask: Tensor
    scores: Tensor
    old_logps: Tensor
    old_values: Tensor
    reference_logps: Tensor
    advantages: Tensor
    returns: Tensor
    n_empty: int

    def metrics(self) -> dict[str, float]:
        kl = ((self.old_logps - self.reference_logps) * self.mask).sum(dim=1)
        return {
            "score": float(self.scores.mean()),
            "kl": float(kl.mean()),
            "response_tokens": float(self.mask.sum(dim=1).float().mean()),
            "n_empty": float(self.n_empty),
        }


def collect_rollout(
    trainer: TrainingEngine,
    reference: Policy,
    reward_model: RewardSource,
    prompts: list[str],
    config: PPOConfig,
    seed: int,
) -> Rollout:
    """Sample one response per prompt, score it, and compute old log-probs, values, reference
    log-probs, KL-shaped rewards, GAE advantages (whitened) and returns (no grad)."""
    actor_critic = trainer.module
    samples = sample_responses(actor_critic.policy, prompts, 1, config.generation, seed=seed)
    pairs = [(p, ys[0]) for p, ys in zip(prompts, samples, strict=True) if ys[0]]
    if not pairs:
        raise ValueError("every sampled response of the rollout is empty")
    overrides = config.collator_overrides()
    scores = score_responses(
        reward_model,
        [p for p, _ in pairs],
        [y for _, y in pairs],
        batch_size=config.reward_batch_size,
        collator_overrides=overrides,
    ).to(trainer.device)
    collator = actor_critic.policy.completion_collator(**overrides)
    batch = trainer.to_device(collator([{"prompt": p, "response": y} for p, y in pairs]))
    mask = response_token_mask(batch)
    with torch.no_grad():
        old_logps, old_values = trainer.model.token_logps_and_values(batch, mask.shape[1])
        flat, _ = reference.token_logps(batch)
        ref_logps = left_align(flat, batch["response_mask"][:, 1:].bool(), mask.shape[1])
        rewards = kl_penalized_rewards(scores, old_logps, ref_logps, mask, config.kl_coef)
        old_values = old_values.float()
        advantages, returns = generalized_advantages(
            rewards, old_values, mask, config.gamma, config.lam
        )
        if config.whiten_advantages and int(mask.sum()) > 1:
            advantages = masked_whiten(advantages, mask)
    n_empty = len(prompts) - len(pairs)
    return Rollout(
        batch, mask, scores, old_logps, old_values, ref_logps, advantages, returns, n_empty
    )


def ppo_updates(
    trainer: TrainingEngine, rollout: Rollout, config: PPOConfig, generator: torch.Generator
) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch (``micro_batch_size``) updates of ``L_π + c_V L_V``;
    returns the mean losses and diagnostics."""
    sums: dict[str, float] = {}
    n_updates = 0
    size = trainer.config.micro_batch_size
    n_rows, width = rollout.mask.shape
    for _ in range(config.ppo_epochs):
        permutation = torch.randperm(n_rows, generator=generator).to(trainer.device)
        for start in range(0, n_rows, size):
            rows = permutation[start : start + size]
            batch = {key: value[rows] for key, value in rollout.batch.items()}
            logps, values = trainer.model.token_logps_and_values(batch, width)
            mask = rollout.mask[rows]
            policy_loss, fraction, approx_kl = clipped_policy_loss(
                logps, rollout.old_logps[rows], rollout.advantages[rows], mask, config.clip_range
            )
            value_loss = clipped_value_loss(
                values.float(),
                rollout.old_values[rows],
                rollout.returns[rows],
                mask,
                config.value_clip_range,
            )
            trainer.backward(policy_loss + config.value_coef * value_loss)
            trainer.step()
            values_now = {
                "policy_loss": policy_loss,
                "value_loss": value_loss,
                "clip_fraction": fraction,
                "approx_kl": approx_kl,
            }
            for key, value in values_now.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            n_updates += 1
    return {key: value / n_updates for key, value in sums.items()}


def train_ppo(
    policy: Policy,
    reward_model: RewardSource,
    prompts: Sequence[str | Completion | Preference],
    config: PPOConfig | None = None,
    *,
    reference_model: Policy | None = None,
    engine: EngineConfig | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> PPOResult:
    """PPO of ``policy`` (in place) against ``reward_model`` on ``prompts`` (module docstring).

    Args:
        policy: the policy (e.g. the SFT policy); a value head is added around it.
        reward_model: a :class:`RewardModel` (frozen) or a ``reward_fn(prompts, responses)``.
        prompts: training-domain prompts for PPO(tr), test-domain prompts for PPO(te).
        config: :class:`PPOConfig`.
        reference_model: ``π_ref`` (default: a frozen copy of ``policy`` as passed in).
        engine: an :class:`EngineConfig` (torch, or DeepSpeed up to ZeRO-2); the engine trains
            the policy and the value head together.
        log_path: JSONL, one record per iteration.
        checkpoint_dir, checkpoint_every, keep_last: an engine state after every
            ``checkpoint_every``-th iteration (``0``: only after the last) and after the last;
            ``keep_last`` prunes older ones.
        resume_from: a state directory or a checkpoint root with ``latest``: continue that run
            (the same settings and initial policy; ``iterations`` may grow). ``history`` then
            holds the saved iterations' records too; ``log_path`` gets only the new ones.
    """
    policy = check_policy(policy)
    texts = check_prompts(prompts)
    config = config or PPOConfig()
    if not isinstance(config, PPOConfig):
        raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
    if engine is not None and not isinstance(engine, EngineConfig):
        raise TypeError(f"engine must be an EngineConfig or None, got {type(engine).__name__}")
    forbid_zero3(engine, "PPO")
    reference = (reference_model or policy).reference_copy()
    actor_critic = PolicyWithValueHead(policy, seed=config.seed)
    trainer = resolve_engine(actor_critic, engine)
    reference.to(trainer.device)
    actor_critic.eval()
    check_checkpointing(checkpoint_every, keep_last)
    logger = JsonlLogger(log_path) if log_path is not None and trainer.is_main else None
    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    result = PPOResult(policy, engine=trainer, actor_critic=actor_critic)
    state = RoundState("ppo", ppo_fingerprint(config, texts, trainer))
    first, micro_batches = 0, 0
    if resume_from is not None:
        state_dir = load_round_state(resume_from, state)
        saved = ppo_data(state, state_dir / "extra.json", len(texts))
        if state.round > config.iterations:
            raise ValueError(
                f"{state_dir}: the checkpoint is after iteration {state.round}, past the run's "
                f"iterations={config.iterations}"
            )
        trainer.load_state(state_dir)
        generator.set_state(saved["generator"])
        order, micro_batches = saved["order"], saved["micro_batches"]
        result.history.extend(saved["history"])
        first = state.round
    for iteration in range(first, config.iterations):
        while len(order) < config.rollout_size:
            order += torch.randperm(len(texts), generator=generator).tolist()
        chosen = [texts[i] for i in order[: config.rollout_size]]
        del order[: config.rollout_size]
        seed = config.seed + 7919 * (iteration + 1)
        rollout = collect_rollout(trainer, reference, reward_model, chosen, config, seed)
        losses = ppo_updates(trainer, rollout, config, generator)
        micro_batches += config.ppo_epochs * math.ceil(
            rollout.mask.shape[0] / trainer.config.micro_batch_size
        )
        record = {"iteration": iteration, "step": trainer.global_step}
        record.update({**rollout.metrics(), **losses})
        if not all(math.isfinite(v) for v in record.values()):
            raise FloatingPointError(f"PPO iteration {iteration} produced non-finite metrics")
        result.history.append(record)
        if logger is not None:
            logger(record)
        done = iteration + 1
        due = (checkpoint_every and done % checkpoint_every == 0) or done == config.iterations
        if checkpoint_dir is not None and due and micro_batches % trainer.config.grad_accum == 0:
            state.begin(
                done,
                trainer.global_step,
                generator=[int(v) for v in generator.get_state().tolist()],
                order=list(order),
                micro_batches=micro_batches,
                history=list(result.history),
            )
            result.last_checkpoint = save_engine_checkpoint(
                trainer, checkpoint_dir, state, keep_last=keep_last
            )
    return result


__all__ = [
    "PPOConfig",
    "PPOResult",
    "PolicyWithValueHead",
    "Rollout",
    "clipped_policy_loss",
    "clipped_value_loss",
    "collect_rollout",
    "generalized_advantages",
    "kl_penalized_rewards",
    "left_align",
    "masked_mean",
    "masked_whiten",
    "ppo_updates",
    "response_token_mask",
    "train_ppo",
]
