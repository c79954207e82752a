"""How the reward-model and DPO trainers batch preference pairs: tokenise once, then pack.

Every training pair is tokenised and truncated once, before the first step
(:meth:`~oodpl.models.collate.PreferenceCollator.tokenize`); each micro-batch is then built from
the token lists by one of three paths, all giving the same per-pair rewards / log-probs up to
float rounding (tests: ≤ 1e-5 in float32):

- **packed** (padding-free): one row with no padding. For models with plain causal attention
  the *prefix-shared* layout (:mod:`oodpl.models.shared_prefix`): one segment per pair in which
  the prompt (and any common start of the two responses) is run once, with a two-branch causal
  mask; for flash-attention models (varlen kernels) and architectures with sliding windows /
  soft-capping the 2B sequences back to back (:mod:`oodpl.models.packing`,
  :mod:`oodpl.models.packed_forward`). No compute goes to padding or to a second copy of the
  prompt.
- **padded**: the classic ``[2B, T_max]`` pair batch (:mod:`oodpl.models.collate`).
- **length-bucketed padded**: the padded path over global batches of similar lengths
  (:func:`oodpl.models.bucketing.bucketed_global_batches`), the fallback when packing is
  unavailable (T5 / seq2seq, or a model whose body takes no ``position_ids``).

``packing`` (``PairBatchingOptions.packing``):

- ``"auto"`` (default): pack causal LMs that can run packed, batch by batch, whenever at least
  :data:`~oodpl.models.packing.AUTO_PACKING_MIN_PADDING` of the padded batch would be padding
  (below that one batched attention call beats one call per sequence); otherwise pad.
- ``"always"``: pack every batch (``ValueError`` naming the field if the model cannot).
- ``"never"``: always pad.

``group_by_length`` (``None`` = auto): bucket global batches by length when batches are padded
and packing is unavailable or off; ``True`` / ``False`` force it. Bucketing changes which pairs
share a batch (randomness is kept across windows of 50 batches; deterministic in seed and epoch,
so resuming reproduces it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from oodpl.models.backbone import _accepts_position_ids, unwrap
from oodpl.models.bucketing import bucketed_global_batches
from oodpl.models.collate import Batch, PreferenceCollator, TokenizedPreference
from oodpl.models.packing import PACKING_MODES, PackedPreferenceCollator
from oodpl.models.shared_prefix import packed_layout
from oodpl.models.trainers._policy_common import CollateOptions, check_choice

BatchOrder = Callable[..., list[list[int]]]
"""``order(n_items, *, global_batch_size, seed, epoch) -> global batches`` (as
:func:`oodpl.models.engine.distributed.global_batches`)."""


@dataclass(frozen=True)
class PairBatchingOptions(CollateOptions):
    """Collator limits plus the batching path (module docstring).

    Attributes:
        packing: ``"auto"``, ``"always"`` or ``"never"``.
        group_by_length: bucket batches by length (``None``: when padding without packing).
    """

    packing: str = "auto"
    group_by_length: bool | None = None

    def check_batching(self) -> None:
        name = type(self).__name__
        check_choice(self.packing, f"{name}.packing", PACKING_MODES)
        if self.group_by_length is not None and not isinstance(self.group_by_length, bool):
            raise TypeError(f"{name}.group_by_length must be a bool or None")


def packing_unavailable(model: nn.Module) -> str | None:
    """Why ``model`` (a RewardModel or Policy) cannot run packed batches, or ``None`` if it can."""
    lm = unwrap(model.model)
    if getattr(lm.config, "is_encoder_decoder", False):
        return f"{lm.config.model_type} is an encoder-decoder (seq2seq) model"
    if not _accepts_position_ids(type(lm.base_model)):
        return f"{type(lm.base_model).__name__}.forward takes no position_ids"
    if getattr(model, "logits_from_hidden", True) is False:
        return "the policy's LM-head transform is not reproduced (logits_from_hidden is False)"
    return None


def resolve_packing(model: nn.Module, options: PairBatchingOptions) -> bool:
    """Whether ``model``'s batches may be packed under ``options.packing`` (``ValueError``
    naming the field for ``"always"`` on a model that cannot run packed)."""
    reason = packing_unavailable(model)
    if options.packing == "always" and reason is not None:
        name = type(options).__name__
        raise ValueError(f"{name}.packing='always' but {reason}; use 'auto' or 'never'")
    return options.packing != "never" and reason is None


def packed_collator(
    model: nn.Module, collator: PreferenceCollator, mode: str = "auto"
) -> PackedPreferenceCollator:
    """``collator`` packing in ``model``'s layout
    (:func:`~oodpl.models.shared_prefix.packed_layout`); ``mode`` as
    :class:`~oodpl.models.packing.PackedPreferenceCollator`. Check :func:`packing_unavailable`
    first."""
    return PackedPreferenceCollator(collator, mode=mode, layout=packed_layout(model))


@dataclass
class PairBatches:
    """The batching plan of one training run.

    Attributes:
        items: the tokenised pairs, in record order.
        collate: ``collate(items) -> batch`` (packed or padded pair batch).
        order: the global-batch order for the engine loop (``None``: the loop's shuffled order).
        packs: whether batches may be packed (``packing`` resolved against the model).
        collator: the model's :class:`PreferenceCollator` (truncation stats, settings).
    """

    items: list[TokenizedPreference]
    collate: Callable[[Sequence[Any]], Batch]
    order: BatchOrder | None
    packs: bool
    collator: PreferenceCollator


def plan_pair_batches(
    model: nn.Module, records: Sequence[Any], options: PairBatchingOptions
) -> PairBatches:
    """Tokenise ``records`` once with ``model``'s collator and choose the batching path."""
    options.check_batching()
    collator = model.preference_collator(**options.collator_overrides())
    items = collator.tokenize(records)
    packs = resolve_packing(model, options)
    collate: Callable[[Sequence[Any]], Batch] = collator
    if packs:
        collate = packed_collator(
            model, collator, "always" if options.packing == "always" else "auto"
        )
    bucket = options.group_by_length
    if bucket is None:
        bucket = not packs
    order = None
    if bucket:
        lengths = [max(item.lengths()) for item in items]
        order = functools.partial(_bucketed_order, lengths)
    return PairBatches(items, collate, order, packs, collator)


def _bucketed_order(
    lengths: list[int], n_items: int, *, global_batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    if n_items != len(lengths):
        raise ValueError(f"the dataset has {n_items} items but {len(lengths)} lengths")
    return bucketed_global_batches(
        lengths, global_batch_size=global_batch_size, seed=seed, epoch=epoch
    )


__all__ = [
    "BatchOrder",
    "PairBatches",
    "PairBatchingOptions",
    "packed_collator",
    "packing_unavailable",
    "plan_pair_batches",
    "resolve_packing",
]
