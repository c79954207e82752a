"""Explicit reward-model training: Bradley–Terry, MultiTask mixing and MORE (METHODS §1, §5).

Objectives (``RewardTrainConfig.objective``):

- ``"bt"``: ``L = −mean_b log σ(r(x_b, y_w,b) − r(x_b, y_l,b) − m)`` over minibatches drawn from
  all pairs pooled (:func:`oodpl.core.losses.bradley_terry_loss`, METHODS §1).
- ``"multitask"`` and ``"more"`` ([MORE], METHODS §5): the pairs are grouped into K sources
  (``Preference.source``, or ``.domain``) and every minibatch holds the same number ``b`` of pairs
  from each source; the loss is ``L = Σ_i λ_i L_BT(θ; B_i)`` (:func:`oodpl.core.moo.more_loss`,
  ``λ`` constant in backward) with

  - MultiTask: fixed ``λ_i = |D_i| / Σ_j |D_j|`` (plain mixing by source size);
  - MORE: ``λ = argmin_{λ∈Δ} ‖Σ_i λ_i g̃_i‖²`` (:func:`oodpl.core.moo.min_norm_weights`), recomputed
    every micro-batch, where ``g_i`` is the gradient of ``L_BT(B_i)`` w.r.t. the linear value head
    ``r = w·f + c`` on detached pooled features ``f``. For BT this gradient has the closed form
    ``∂L_i/∂w = (1/b) Σ_{pairs of i} −σ(−(r_w − r_l − m)) (f_w − f_l)`` and ``∂L_i/∂c = 0`` (the
    bias cancels in ``r_w − r_l``), so no second pass through the head is needed; ``g̃`` is the
    optional momentum ``g̃_i ← (1−a) g̃_i + a g_i`` with optional l2 normalisation
    (:class:`oodpl.core.moo.GradientMomentum`). With several processes the ``g_i`` are averaged
    over ranks first, so every rank uses the same ``λ``.

Batching (:mod:`oodpl.models.trainers.pair_batching`): every pair is tokenised once before the
first step; batches are packed padding-free for causal LMs whenever they would hold padding
(``packing="auto"``), padded otherwise, and length-bucketed when packing is unavailable (T5).

For MultiTask/MORE an epoch passes once over the largest source: item ``j`` of the training set is
the bundle ``(D_1[π_1(j mod |D_1|)], …, D_K[π_K(j mod |D_K|)])`` with seeded permutations ``π_i``,
and the engine's ``micro_batch_size`` counts bundles (``K`` pairs each). Runs on the training
engine (torch or DeepSpeed backend) with the generic loop (seeded order, JSONL metrics, resumable
checkpoints; MORE's momentum is saved with them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oodpl.core.losses import bradley_terry_loss
from oodpl.core.metrics import preference_accuracy
from oodpl.core.moo import GradientMomentum, min_norm_weights, more_loss
from oodpl.core.records import Preference
from oodpl.models.engine import EngineConfig, TrainingEngine
from oodpl.models.engine.distributed import epoch_permutation
from oodpl.models.engine.loop import JsonlLogger
from oodpl.models.engine.loop import train as loop_train
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    check_choice,
    check_number,
    check_records,
    resolve_engine,
)
from oodpl.models.trainers.pair_batching import (
    PairBatchingOptions,
    packed_collator,
    packing_unavailable,
    plan_pair_batches,
)

REWARD_OBJECTIVES: tuple[str, ...] = ("bt", "multitask", "more")
GROUP_FIELDS: tuple[str, ...] = ("source", "domain")


@dataclass(frozen=True)
class RewardTrainConfig(PairBatchingOptions):
    """Settings of :func:`train_reward_model` (optimiser, batch, steps, seed: ``EngineConfig``).

    Attributes:
        objective: ``"bt"``, ``"multitask"`` or ``"more"`` (module docstring).
        margin: BT margin ``m`` (default 0).
        group_by: record field naming the source for multitask/more: ``"source"`` or ``"domain"``.
        more_momentum: MORE momentum ``a`` in (0, 1]; ``None`` uses the current gradients only.
        more_normalize: l2-normalise each source gradient before the min-norm solve.
        max_length, max_prompt_length: collator limits (``None``: the model's).
        packing, group_by_length: the batching path (:mod:`~oodpl.models.trainers.pair_batching`).
    """

    objective: str = "bt"
    margin: float = 0.0
    group_by: str = "source"
    more_momentum: float | None = None
    more_normalize: bool = False

    def __post_init__(self) -> None:
        check_choice(self.objective, "RewardTrainConfig.objective", REWARD_OBJECTIVES)
        check_choice(self.group_by, "RewardTrainConfig.group_by", GROUP_FIELDS)
        check_number(self.margin, "RewardTrainConfig.margin")
        if self.more_momentum is not None:
            a = check_number(self.more_momentum, "RewardTrainConfig.more_momentum")
            if not 0.0 < a <= 1.0:
                raise ValueError(f"RewardTrainConfig.more_momentum must be in (0, 1], got {a}")
        if not isinstance(self.more_normalize, bool):
            raise TypeError("RewardTrainConfig.more_normalize must be a bool")
        self.collator_overrides()
        self.check_batching()


@dataclass
class RewardTrainResult:
    """What :func:`train_reward_model` returns (the model is trained in place).

    Attributes:
        reward_model: the trained model.
        history: one record per optimizer step (``loss``, ``accuracy``, ``lr``, ``grad_norm``;
            for multitask/more also ``loss/<source>`` and ``lambda/<source>``).
        sources: the source names, in the order of ``lambda/*`` (multitask/more; else empty).
        engine: the engine that trained it; last_checkpoint: the last state written, if any.
    """

    reward_model: RewardModel
    history: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    engine: TrainingEngine | None = None
    last_checkpoint: Path | None = None


def group_by_source(records: Sequence[Preference], field_name: str) -> dict[str, list[Preference]]:
    """``{source: records}`` sorted by source name; ``ValueError`` if fewer than two sources."""
    groups: dict[str, list[Preference]] = {}
    for index, record in enumerate(records):
        name = getattr(record, field_name)
        if not name:
            raise ValueError(f"preferences[{index}].{field_name} is empty: cannot group by it")
        groups.setdefault(name, []).append(record)
    if len(groups) < 2:
        raise ValueError(
            f"multi-source objectives need >= 2 distinct values of Preference.{field_name}, "
            f"got {sorted(groups)}"
        )
    return dict(sorted(groups.items()))


def source_bundles(groups: Mapping[str, Sequence[Preference]], seed: int) -> list[tuple]:
    """Bundles of one pair per source; ``max |D_i|`` of them (smaller sources cycle).

    Source ``i`` is visited in the seeded order ``epoch_permutation(|D_i|, seed=seed + i)``.
    """
    items = list(groups.values())
    n = max(len(g) for g in items)
    orders = [epoch_permutation(len(g), seed=seed + i, epoch=0) for i, g in enumerate(items)]
    return [
        tuple(g[order[j % len(g)]] for g, order in zip(items, orders, strict=True))
        for j in range(n)
    ]


def bt_head_gradients(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_features: torch.Tensor,
    rejected_features: torch.Tensor,
    n_sources: int,
    margin: float = 0.0,
) -> torch.Tensor:
    """Per-source ``∂L_BT(B_i)/∂w`` of a linear head, closed form: ``Tensor[K, H]``.

    Pairs are in source-major order (``K`` blocks of ``b`` pairs); see the module docstring.
    """
    coef = -torch.sigmoid(-(chosen - rejected - margin)).detach().float()
    diff = (chosen_features - rejected_features).detach().float()
    per_pair = coef[:, None] * diff
    return per_pair.reshape(n_sources, -1, per_pair.shape[-1]).mean(dim=1)


class _MoreState:
    """MORE's gradient momentum as loop trainer state (JSON floats, exact round trip)."""

    def __init__(self, n_sources: int, momentum: float | None, normalize: bool) -> None:
        self.tracker = GradientMomentum(
            n_sources, momentum=1.0 if momentum is None else momentum, normalize=normalize
        )

    def state_dict(self) -> dict[str, Any]:
        buffer = self.tracker.buffer
        return {
            "n_updates": self.tracker.n_updates,
            "buffer": None if buffer is None else buffer.double().tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.reset()
        if state.get("buffer") is not None:
            buffer = torch.tensor(state["buffer"], dtype=torch.float32)
            self.tracker._buffer = buffer  # no public setter in GradientMomentum
            self.tracker.dim = buffer.shape[1]
        self.tracker.n_updates = int(state.get("n_updates", 0))


def _value_head(module: nn.Module) -> nn.Linear:
    head = getattr(module, "value_head", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError("objective='more' needs a model with a linear value_head (RewardModel)")
    return head


def _source_losses_fn(
    engine: TrainingEngine,
    config: RewardTrainConfig,
    sources: list[str],
    weights_of_sources: torch.Tensor | None,
    more: _MoreState | None,
):
    """``loss_fn`` for multitask/more: K per-source BT losses combined with ``λ``."""
    k = len(sources)
    captured: dict[str, torch.Tensor] = {}
    hook = None
    if more is not None:  # the pooled features are the value head's input
        hook = _value_head(engine.module).register_forward_hook(
            lambda _m, inputs, _o: captured.__setitem__("features", inputs[0])
        )

    def loss_fn(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        chosen, rejected = model.preference_rewards(batch)
        chosen, rejected = chosen.float(), rejected.float()
        losses = bradley_terry_loss(chosen, rejected, config.margin, reduction="none")
        per_source = losses.reshape(k, -1).mean(dim=1)
        if more is None:
            lam = weights_of_sources
        else:
            feats = captured.pop("features")
            n = chosen.shape[0]
            grads = bt_head_gradients(chosen, rejected, feats[:n], feats[n:], k, config.margin)
            lam = min_norm_weights(more.tracker.update(engine.all_reduce_mean(grads)))
        assert lam is not None
        loss = more_loss(per_source, lam.to(per_source.device))
        metrics: dict[str, Any] = {"accuracy": preference_accuracy(chosen, rejected).accuracy}
        for i, name in enumerate(sources):
            metrics[f"loss/{name}"] = per_source[i].detach()
            metrics[f"lambda/{name}"] = float(lam[i])
        return loss, metrics

    return loss_fn, hook


def bt_loss_fn(margin: float = 0.0):
    """``loss_fn(model, pair_batch) -> (L_BT, {"accuracy", "margin"})`` for the engine loop."""

    def loss_fn(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        chosen, rejected = model.preference_rewards(batch)
        loss = bradley_terry_loss(chosen.float(), rejected.float(), margin)
        accuracy = preference_accuracy(chosen, rejected).accuracy
        return loss, {"accuracy": accuracy, "margin": (chosen - rejected).detach().mean()}

    return loss_fn


def train_reward_model(
    reward_model: RewardModel,
    preferences: Sequence[Preference],
    config: RewardTrainConfig | None = None,
    *,
    engine: EngineConfig | TrainingEngine | None = None,
    max_steps: int | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> RewardTrainResult:
    """Train ``reward_model`` (in place) on ``preferences`` with ``config.objective``.

    Args:
        reward_model: a :class:`RewardModel` (LoRA + value head, or full weights + value head).
        preferences: training pairs; for multitask/more their ``source`` (or ``domain``) names
            the K sources.
        config: :class:`RewardTrainConfig` (default: plain BT).
        engine: an :class:`EngineConfig` (backend, ZeRO stage, lr, micro-batch size, steps,
            seed) or a :class:`TrainingEngine` already built around ``reward_model``.
        max_steps: optimizer steps to reach (default ``engine.config.max_steps``).
        log_path: JSONL file receiving one record per step.
        checkpoint_dir, checkpoint_every, keep_last, resume_from: see
            :func:`oodpl.models.engine.loop.train`.
    """
    if not isinstance(reward_model, RewardModel):
        raise TypeError(
            f"reward_model must be an oodpl.models.RewardModel, got {type(reward_model).__name__}"
        )
    records = check_records(preferences, Preference, "preferences")
    config = config or RewardTrainConfig()
    if not isinstance(config, RewardTrainConfig):
        raise TypeError(f"config must be a RewardTrainConfig, got {type(config).__name__}")
    trainer = resolve_engine(reward_model, engine)
    sources: list[str] = []
    more_state: _MoreState | None = None
    hook = None
    order = None
    if config.objective == "bt":
        plan = plan_pair_batches(reward_model, records, config)
        dataset: list[Any] = plan.items
        collate = plan.collate
        order = plan.order
        loss_fn = bt_loss_fn(config.margin)
    else:
        groups = group_by_source(records, config.group_by)
        sources = list(groups)
        # tokenised once; bundles of one pair per source are not length-bucketed
        plan = plan_pair_batches(reward_model, [r for g in groups.values() for r in g], config)
        tokens = iter(plan.items)
        tokenized = {name: [next(tokens) for _ in group] for name, group in groups.items()}
        dataset = source_bundles(tokenized, trainer.config.seed)
        sizes = torch.tensor([len(g) for g in groups.values()], dtype=torch.float64)
        fixed = sizes / sizes.sum() if config.objective == "multitask" else None
        if config.objective == "more":
            more_state = _MoreState(len(sources), config.more_momentum, config.more_normalize)
        pair_collate = plan.collate

        def collate(bundles: list[tuple]) -> dict[str, torch.Tensor]:  # source-major order
            return pair_collate([bundle[i] for i in range(len(sources)) for bundle in bundles])

        loss_fn, hook = _source_losses_fn(trainer, config, sources, fixed, more_state)
    logger = JsonlLogger(log_path) if log_path is not None else None
    try:
        result = loop_train(
            trainer,
            dataset,
            loss_fn,
            collate_fn=collate,
            max_steps=max_steps,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            keep_last=keep_last,
            resume_from=resume_from,
            on_log=logger,
            trainer_state=more_state,
            batch_order=order,
        )
    finally:
        if hook is not None:
            hook.remove()
    return RewardTrainResult(reward_model, result.history, sources, trainer, result.last_checkpoint)


@torch.no_grad()
def reward_preference_metrics(
    reward_model: RewardModel,
    preferences: Sequence[Preference],
    *,
    batch_size: int = 32,
    collate: CollateOptions | None = None,
) -> dict[str, float]:
    """``{"bt_loss", "accuracy", "ties"}`` of the reward model on ``preferences`` (eval mode)."""
    records = check_records(preferences, Preference, "preferences")
    overrides = (collate or CollateOptions()).collator_overrides()
    collator: Any = reward_model.preference_collator(**overrides)
    if packing_unavailable(reward_model) is None:  # the training path's packing (auto rule)
        collator = packed_collator(reward_model, collator)
    batches = (collator(records[i : i + batch_size]) for i in range(0, len(records), batch_size))
    out = reward_model.compute_rewards(batches)
    chosen, rejected = out["chosen_rewards"].double(), out["rejected_rewards"].double()
    accuracy = preference_accuracy(chosen, rejected)
    return {
        "bt_loss": float(bradley_terry_loss(chosen, rejected)),
        "accuracy": accuracy.accuracy,
        "ties": float(accuracy.n_ties),
    }


__all__ = [
    "REWARD_OBJECTIVES",
    "RewardTrainConfig",
    "RewardTrainResult",
    "bt_head_gradients",
    "bt_loss_fn",
    "group_by_source",
    "reward_preference_metrics",
    "source_bundles",
    "train_reward_model",
]
