"""Length-bucketed batching: a partition of the indices, deterministic, less padding."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from oodpl.models.bucketing import (
    LengthBucketedBatchSampler,
    bucketed_batches,
    bucketed_global_batches,
    padding_fraction,
    preference_lengths,
)
from oodpl.models.collate import PreferenceCollator
from oodpl.models.engine.distributed import global_batches


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 200), min_size=1, max_size=80),
    batch_size=st.integers(1, 9),
    bucket_batches=st.integers(1, 6),
    seed=st.integers(0, 5),
    drop_last=st.booleans(),
)
def test_batches_partition_the_indices(lengths, batch_size, bucket_batches, seed, drop_last):
    batches = bucketed_batches(
        lengths, batch_size, seed=seed, bucket_batches=bucket_batches, drop_last=drop_last
    )
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert all(1 <= len(b) <= batch_size for b in batches)
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
        assert len(flat) >= len(lengths) - (batch_size - 1) * -(
            -len(lengths) // (bucket_batches * batch_size)
        )
    else:
        assert sorted(flat) == list(range(len(lengths)))
    assert batches == bucketed_batches(
        lengths, batch_size, seed=seed, bucket_batches=bucket_batches, drop_last=drop_last
    )


def test_one_window_gives_minimal_padding_and_epochs_differ():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(256)]
    naive = [list(range(i, i + 8)) for i in range(0, 256, 8)]
    bucketed = bucketed_batches(lengths, 8, bucket_batches=32)  # one window: globally sorted
    by_length = sorted(range(256), key=lambda i: lengths[i])
    optimal = [by_length[i : i + 8] for i in range(0, 256, 8)]
    assert padding_fraction(lengths, bucketed) == pytest.approx(padding_fraction(lengths, optimal))
    assert padding_fraction(lengths, bucketed) < 0.5 * padding_fraction(lengths, naive)
    windowed = bucketed_batches(lengths, 8, bucket_batches=4)
    assert padding_fraction(lengths, windowed) < padding_fraction(lengths, naive)
    assert bucketed_batches(lengths, 8, epoch=1) != bucketed_batches(lengths, 8, epoch=0)


def test_global_batches_drop_in_for_the_engine_loop():
    lengths = [(7 * i) % 23 for i in range(50)]
    mine = bucketed_global_batches(lengths, global_batch_size=8, seed=1, epoch=2, bucket_batches=2)
    theirs = global_batches(50, global_batch_size=8, seed=1, epoch=2)
    assert len(mine) == len(theirs) == 6
    assert all(len(b) == 8 for b in mine)
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in mine)
    with pytest.raises(ValueError, match="global batch"):
        bucketed_global_batches([1, 2], global_batch_size=3, seed=0, epoch=0)


def test_sampler_drives_a_dataloader():
    lengths = [3, 9, 1, 7, 2, 8, 4]
    sampler = LengthBucketedBatchSampler(lengths, 3, seed=2)
    loader = DataLoader(list(range(7)), batch_sampler=sampler, collate_fn=list)
    seen = [i for batch in loader for i in batch]
    assert sorted(seen) == list(range(7)) and len(sampler) == 3 == len(list(loader))
    first = sampler.batches()
    sampler.set_epoch(1)
    assert sampler.batches() != first or len(first) == 1
    assert len(LengthBucketedBatchSampler(lengths, 3, drop_last=True)) == 2


@pytest.mark.parametrize("family_arch", ["pythia-tiny", "t5-tiny"])
def test_preference_lengths_match_collated_widths(tokenizer, preferences, family_arch):
    from oodpl.models.reward_model import RewardModel

    collator = RewardModel.from_preset(family_arch, tokenizer).preference_collator()
    assert isinstance(collator, PreferenceCollator)
    before = collator.truncation_stats.as_dict()
    lengths = preference_lengths(preferences[:6], collator)
    assert collator.truncation_stats.as_dict() == before
    for record, length in zip(preferences[:6], lengths, strict=True):
        batch = collator([record])
        width = batch["chosen_attention_mask"].shape[1]
        if "chosen_decoder_attention_mask" in batch:
            width += batch["chosen_decoder_attention_mask"].shape[1]
        assert length == width  # one record: padded width = its longer half


def test_bad_input_named():
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        bucketed_batches([1, -2], 2)
    with pytest.raises(ValueError, match="lengths"):
        bucketed_batches([], 2)
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_batches([1], 0)
    with pytest.raises(ValueError, match="bucket_batches"):
        LengthBucketedBatchSampler([1], 1, bucket_batches=0)
    with pytest.raises(TypeError, match="collator"):
        preference_lengths([], object())  # type: ignore[arg-type]
    assert bucketed_batches(torch.tensor([3, 1, 2]), 3) == [[1, 2, 0]]
