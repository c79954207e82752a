"""DPO-family policy training with a frozen reference (METHODS §2; [DPORM]).

Per pair, with summed response log-probabilities (:meth:`Policy.preference_logps`) and
``u = (logπ_θ(y_w) − logπ_ref(y_w)) − (logπ_θ(y_l) − logπ_ref(y_l))``, ``h = βu``, the loss is
:func:`oodpl.core.losses.dpo_loss` of ``loss_type``: sigmoid ``−log σ(h)``, label-smoothed
``−(1−ε)log σ(h) − ε log σ(−h)``, robust ``[−(1−ε)log σ(h) + ε log σ(−h)]/(1−2ε)``, IPO
``(h/β − 1/(2β))²``, hinge ``max(0, 1−h)``; RPO adds ``α·(−logπ_θ(y_w)/|y_w|)``.

The reference ``π_ref`` is, by ``DPOConfig.reference``:

- ``"precomputed"`` (default): ``logπ_ref`` of every training pair computed once before training
  (eval mode, no grad) and carried in the batches — no second model in memory, and it works with
  ZeRO-3 because it runs before the engine partitions the policy. With
  ``DPOConfig.reference_cache_dir`` the log-probs are stored on disk (safetensors) keyed by
  (reference weights, data, tokenizer, collator settings, packed/padded path) and later runs and
  epochs with the same inputs read them instead of running the reference at all
  (:mod:`oodpl.models.ref_cache`);
- ``"model"``: a frozen eval-mode reference run on every batch (no grad). For a LoRA policy whose
  adapters are still the identity (LoRA ``B = 0``, LM-head copy equal to the base head: the state
  right after :func:`~oodpl.models.lora.apply_lora`) and no ``reference_model``, the reference is
  the policy itself with its adapters switched off (``adapters_disabled``): no copy in memory
  (not under ZeRO-3, where it is untested). Otherwise a frozen deep copy.

Either way the reference is ``reference_model`` if given, else the policy as passed in (so when
resuming, pass the same *initial* policy: the loop restores the trained weights from the state).
Reference and policy log-probs are summed over response tokens (no length normalisation); the
logged implicit rewards are exactly ``β(logπ_θ − logπ_ref)`` of those sums, so recomputing them
after training with the same reference reproduces the logs.

Batching (:mod:`oodpl.models.trainers.pair_batching`): pairs are tokenised once, batches are
packed padding-free for causal LMs whenever they would hold padding (``packing="auto"``); the
reference log-probs are computed on the same token lists (packed when the model can run packed).
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
from oodpl.models.collate import TokenizedPreference
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.policy import Policy
from oodpl.models.ref_cache import cached_reference_logps
from oodpl.models.trainers._policy_common import (
    PolicyTrainResult,
    check_choice,
    check_int,
    check_policy,
    check_records,
    is_zero3,
    resolve_engine,
    run_loop,
)
from oodpl.models.trainers.pair_batching import (
    PairBatches,
    PairBatchingOptions,
    plan_pair_batches,
    resolve_packing,
)

REFERENCE_MODES: tuple[str, ...] = ("precomputed", "model")
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")


@dataclass(frozen=True)
class DPOConfig(PairBatchingOptions):
    """Settings of :func:`train_dpo` (optimiser, batch size, steps and seed: ``EngineConfig``).

    Attributes:
        beta: ``β > 0`` ([DPORM] uses 0.03).
        loss_type: one of :data:`oodpl.core.losses.DPO_LOSS_TYPES`.
        label_smoothing: ε for ``"label_smoothed"`` ([0, 1]) or ``"robust"`` ([0, ½)); else 0.
        rpo_alpha: weight ``α >= 0`` of the RPO term.
        reference: ``"precomputed"`` or ``"model"`` (module docstring).
        reference_batch_size: pairs per forward when precomputing reference log-probs.
        reference_cache_dir: directory caching precomputed reference log-probs across runs
            (``None``: computed in memory for this run only).
        max_length, max_prompt_length: collator limits (``None``: the model's).
        packing, group_by_length: the batching path (:mod:`~oodpl.models.trainers.pair_batching`).
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    reference: str = "precomputed"
    reference_batch_size: int = 32
    reference_cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_choice(self.loss_type, "DPOConfig.loss_type", DPO_LOSS_TYPES)
        check_choice(self.reference, "DPOConfig.reference", REFERENCE_MODES)
        check_int(self.reference_batch_size, "DPOConfig.reference_batch_size", minimum=1)
        probe = torch.zeros(1)
        try:  # the loss's own validation of beta / label_smoothing / rpo_alpha
            dpo_loss(probe, probe, probe, probe, **self.loss_kwargs(), chosen_n_tokens=probe + 1)
        except (TypeError, ValueError) as err:
            raise type(err)(f"DPOConfig: {err}") from None
        if self.reference_cache_dir is not None and not isinstance(
            self.reference_cache_dir, (str, Path)
        ):
            raise TypeError("DPOConfig.reference_cache_dir must be a path or None")
        if self.reference_cache_dir is not None and self.reference != "precomputed":
            raise ValueError("DPOConfig.reference_cache_dir needs reference='precomputed'")
        self.collator_overrides()
        self.check_batching()

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
    """A training pair (record or its tokens) with its precomputed reference log-probs (summed)."""

    record: Preference | TokenizedPreference
    reference_chosen_logps: float
    reference_rejected_logps: float


def precompute_reference_logps(
    reference: Policy,
    records: Sequence[Preference],
    config: DPOConfig,
    *,
    tokenized: PairBatches | None = None,
) -> list[ReferencedPair]:
    """``logπ_ref(y_w|x), logπ_ref(y_l|x)`` of every pair (eval mode, no grad; float64 sums).

    ``tokenized``: the policy's batching plan; its token lists are reused when ``reference``
    shares the policy's tokenizer (else the reference tokenises the records itself). The pairs
    carry ``tokenized.items`` (or the records) for the training batches. With
    ``config.reference_cache_dir`` the values come from / go to the on-disk cache.
    """
    carried = tokenized.items if tokenized is not None else list(records)
    if config.reference_cache_dir is not None:  # the cache keys and tokenises the records itself
        cached = cached_reference_logps(
            reference,
            list(records),
            cache_dir=config.reference_cache_dir,
            collator=reference.preference_collator(**config.collator_overrides()),
            batch_size=config.reference_batch_size,
            packed=resolve_packing(reference, config),
        )
        chosen, rejected = cached.chosen_logps, cached.rejected_logps
    else:
        plan = tokenized
        if plan is None or reference.tokenizer is not plan.collator.tokenizer:
            plan = plan_pair_batches(reference, records, config)
        size = config.reference_batch_size
        out = reference.compute_logps(
            plan.collate(plan.items[i : i + size]) for i in range(0, len(plan.items), size)
        )
        chosen, rejected = out["chosen_logps"], out["rejected_logps"]
    return [
        ReferencedPair(item, c, r)
        for item, c, r in zip(carried, chosen.tolist(), rejected.tolist(), strict=True)
    ]


def adapters_are_identity(policy: Policy) -> bool:
    """Whether the policy's LoRA adapters leave the base model unchanged: every ``lora_B`` (and
    embedding ``B``) is zero, no DoRA magnitudes, and every trained module copy (e.g. the LM-head
    copy) equals the module it copies. Then ``adapters_disabled()`` is the policy itself."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    if not isinstance(policy.model, PeftModel):
        return False
    for module in policy.model.modules():
        if isinstance(module, LoraLayer):
            if len(module.lora_magnitude_vector) > 0:
                return False
            weights = [m.weight for m in module.lora_B.values()]
            weights += list(module.lora_embedding_B.values())
            if any(bool(w.detach().count_nonzero()) for w in weights):
                return False
        elif isinstance(module, ModulesToSaveWrapper):
            original = module.original_module.state_dict()
            for copy in module.modules_to_save.values():
                for name, value in copy.state_dict().items():
                    if not torch.equal(value, original[name]):
                        return False
    return True


class _AdaptersOffReference:
    """``π_ref`` = the policy with its (identity) adapters switched off, eval mode, no grad."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def preference_logps(self, batch: Mapping[str, torch.Tensor]):
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.adapters_disabled():
                return self.policy.preference_logps(batch)
        finally:
            self.policy.train(was_training)


def dpo_loss_fn(config: DPOConfig, reference: Any = None):
    """``loss_fn(model, pair_batch) -> (loss, metrics)`` for the engine loop.

    Reference log-probs come from the batch (``reference_chosen_logps`` /
    ``reference_rejected_logps``) or, when ``reference`` is given, from that frozen model (any
    object with ``preference_logps(batch)``).
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
    zero3 = is_zero3(engine)
    lora_reference = (  # not under ZeRO-3 (partitioned weights): untested there, copy instead
        config.reference == "model"
        and reference_model is None
        and not zero3
        and adapters_are_identity(policy)
    )
    if isinstance(engine, TrainingEngine) and reference_model is None and zero3:
        raise ValueError(
            "the engine already partitions the policy (ZeRO-3): pass reference_model, or pass "
            "an EngineConfig so the reference is taken before partitioning"
        )
    plan = plan_pair_batches(policy, records, config)
    reference: Any = None
    if config.reference == "precomputed":
        source = reference_model if reference_model is not None else policy
        dataset: list[Any] = precompute_reference_logps(source, records, config, tokenized=plan)
    elif lora_reference:
        dataset = plan.items
        reference = _AdaptersOffReference(policy)
    else:
        dataset = plan.items
        reference = (reference_model or policy).reference_copy()
    trainer = resolve_engine(policy, engine)
    if isinstance(reference, Policy):
        reference.to(trainer.device)
    pair_collate = plan.collate

    def collate(items: list[Any]) -> dict[str, torch.Tensor]:
        if config.reference == "model":
            return pair_collate(items)
        batch = pair_collate([item.record for item in items])
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
        batch_order=plan.order,
    )
    return PolicyTrainResult(policy, loop.history, trainer, loop.last_checkpoint)


__all__ = [
    "REFERENCE_MODES",
    "DPOConfig",
    "ReferencedPair",
    "adapters_are_identity",
    "dpo_loss_fn",
    "precompute_reference_logps",
    "train_dpo",
]
