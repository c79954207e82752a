"""Length-bucketed batching: the fallback when packing is unavailable (T5, or a backend without
masks / varlen kernels). Batches hold records of similar length, so little compute goes to padding.

Algorithm (per epoch, deterministic in ``(seed, epoch)``): shuffle all indices; cut the shuffled
order into *windows* of ``bucket_batches × batch_size`` indices; sort each window by length
(stable, so ties keep the shuffled order); cut it into batches of ``batch_size``; shuffle the
order of the batches. Every index appears at most once per epoch (exactly once unless
``drop_last`` drops the final incomplete batch). ``bucket_batches=1`` only sorts inside a batch
(no padding saved across batches); larger windows trade randomness for less padding.

:func:`bucketed_global_batches` has the signature of
:func:`oodpl.models.engine.distributed.global_batches` (drops the last incomplete batch), so the
engine loop can take its global batches from it; inside a global batch the indices are sorted by
length, so the loop's contiguous micro-batch slices are length-homogeneous as well.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from oodpl.models.collate import PreferenceCollator, TruncationStats, is_pair_batch


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.tolist()
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths:
        raise ValueError("lengths must be a non-empty sequence of ints")
    out = []
    for index, value in enumerate(lengths):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"lengths[{index}] must be an int >= 0, got {value!r}")
        out.append(int(value))
    return out


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def bucketed_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    bucket_batches: int = 50,
    drop_last: bool = False,
    shuffle_batches: bool = True,
) -> list[list[int]]:
    """Batches of indices into ``lengths`` grouped by length (module docstring)."""
    lengths = _check_lengths(lengths)
    _check_positive(batch_size, "batch_size")
    _check_positive(bucket_batches, "bucket_batches")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = bucket_batches * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    if shuffle_batches:
        permutation = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in permutation]
    return batches


def bucketed_global_batches(
    lengths: Sequence[int],
    *,
    global_batch_size: int,
    seed: int,
    epoch: int,
    bucket_batches: int = 50,
) -> list[list[int]]:
    """Drop-in for ``engine.distributed.global_batches`` with length bucketing: full global
    batches only, each sorted by length (so micro-batch slices are length-homogeneous)."""
    lengths = _check_lengths(lengths)
    _check_positive(global_batch_size, "global_batch_size")
    if len(lengths) < global_batch_size:
        raise ValueError(
            f"the dataset has {len(lengths)} items, fewer than one global batch of "
            f"{global_batch_size}"
        )
    batches = bucketed_batches(
        lengths,
        global_batch_size,
        seed=seed,
        epoch=epoch,
        bucket_batches=bucket_batches,
        drop_last=True,
    )
    return [sorted(b, key=lambda i: lengths[i]) for b in batches]


class LengthBucketedBatchSampler(Sampler[list[int]]):
    """``torch.utils.data.DataLoader(dataset, batch_sampler=LengthBucketedBatchSampler(...))``.

    Call :meth:`set_epoch` each epoch for a fresh (reproducible) order.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        bucket_batches: int = 50,
        drop_last: bool = False,
        shuffle_batches: bool = True,
    ) -> None:
        self.lengths = _check_lengths(lengths)
        self.batch_size = _check_positive(batch_size, "batch_size")
        self.bucket_batches = _check_positive(bucket_batches, "bucket_batches")
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle_batches = shuffle_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        return bucketed_batches(
            self.lengths,
            self.batch_size,
            seed=self.seed,
            epoch=self.epoch,
            bucket_batches=self.bucket_batches,
            drop_last=self.drop_last,
            shuffle_batches=self.shuffle_batches,
        )

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def preference_lengths(records: Sequence[Any], collator: PreferenceCollator) -> list[int]:
    """Per record, the padded width it would need: max over chosen / rejected of the tokens of
    the scored sequence plus (seq2seq) the encoder input. The collator's truncation stats are left
    as they were."""
    if not isinstance(collator, PreferenceCollator):
        raise TypeError(f"collator must be a PreferenceCollator, got {type(collator).__name__}")
    saved = collator.truncation_stats
    collator.truncation_stats = TruncationStats()
    try:
        out = []
        for record in records:
            batch = collator([record])
            assert is_pair_batch(batch)
            width = 0
            for prefix in ("chosen_", "rejected_"):
                total = int(batch[prefix + "attention_mask"].sum())
                if prefix + "decoder_attention_mask" in batch:
                    total += int(batch[prefix + "decoder_attention_mask"].sum())
                width = max(width, total)
            out.append(width)
    finally:
        collator.truncation_stats = saved
    return out


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded ``Σ_batch |batch| × max length`` cells that are padding."""
    lengths = _check_lengths(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if padded == 0 else 1.0 - real / padded


__all__ = [
    "LengthBucketedBatchSampler",
    "bucketed_batches",
    "bucketed_global_batches",
    "padding_fraction",
    "preference_lengths",
]
