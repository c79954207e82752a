"""Collators: batch format, padding sides, truncation rules and counts, pair batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.records import Completion, Preference
from oodpl.models.collate import (
    CompletionCollator,
    PreferenceCollator,
    TruncationStats,
    concat_pair_batch,
    is_pair_batch,
    split_pair_batch,
)

CAUSAL_KEYS = {"input_ids", "attention_mask", "response_mask"}
SEQ2SEQ_KEYS = CAUSAL_KEYS | {"decoder_input_ids", "decoder_attention_mask"}


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def unpadded(batch, row, ids_key="input_ids", mask_key="attention_mask"):
    """(ids, response flags) of one row without padding (flags None on the encoder side)."""
    mask = batch[mask_key][row].bool()
    response = batch["response_mask"][row]
    flags = response[mask].tolist() if response.shape == mask.shape else None
    return batch[ids_key][row][mask].tolist(), flags


@pytest.mark.parametrize("side", ["left", "right"])
def test_causal_sequence_batch(tokenizer, completions, side):
    batch = CompletionCollator(tokenizer, padding_side=side)(completions)
    assert set(batch) == CAUSAL_KEYS
    assert all(v.dtype == torch.long for v in batch.values())
    width = batch["input_ids"].shape[1]
    for row, record in enumerate(completions):
        ids, response = unpadded(batch, row)
        x, y = encode(tokenizer, record.prompt), encode(tokenizer, record.response)
        assert ids == x + y + [tokenizer.eos_token_id]
        assert response == [0] * len(x) + [1] * (len(y) + 1)
        n = len(ids)
        real = batch["attention_mask"][row]
        expected = [1] * n + [0] * (width - n) if side == "right" else [0] * (width - n) + [1] * n
        assert real.tolist() == expected
        assert (batch["input_ids"][row][~real.bool()] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_seq2seq_sequence_batch(tokenizer, completions, side):
    collator = CompletionCollator(tokenizer, family="seq2seq", padding_side=side)
    batch = collator(completions)
    assert set(batch) == SEQ2SEQ_KEYS
    for row, record in enumerate(completions):
        prompt, _ = unpadded(batch, row)
        assert prompt == encode(tokenizer, record.prompt)
        dec, response = unpadded(batch, row, "decoder_input_ids", "decoder_attention_mask")
        y = [*encode(tokenizer, record.response), tokenizer.eos_token_id]
        assert dec == [tokenizer.pad_token_id, *y]  # decoder start = pad (T5 convention)
        assert response == [0] + [1] * len(y)


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_pair_batch_halves_share_lengths_and_concat(tokenizer, preferences, family):
    collator = PreferenceCollator(tokenizer, family=family, padding_side="left")
    pair = collator(preferences[:5])
    assert is_pair_batch(pair)
    chosen, rejected = split_pair_batch(pair, "chosen"), split_pair_batch(pair, "rejected")
    for key in chosen:
        assert chosen[key].shape == rejected[key].shape
    stacked, n_pairs = concat_pair_batch(pair)
    assert n_pairs == 5
    for key in chosen:
        assert torch.equal(stacked[key], torch.cat([chosen[key], rejected[key]]))
    ids_key = "decoder_input_ids" if family == "seq2seq" else "input_ids"
    mask_key = "decoder_attention_mask" if family == "seq2seq" else "attention_mask"
    for row, record in enumerate(preferences[:5]):
        for half, text in ((chosen, record.chosen), (rejected, record.rejected)):
            ids, response = unpadded(half, row, ids_key, mask_key)
            got = [t for t, r in zip(ids, response, strict=True) if r]
            assert got == [*encode(tokenizer, text), tokenizer.eos_token_id]


def test_mappings_options_and_multiple(tokenizer):
    collator = CompletionCollator(
        tokenizer, append_eos=False, add_bos=True, pad_to_multiple_of=8, padding_side="right"
    )
    batch = collator([{"prompt": "review 1:", "response": "the book was great"}])
    assert batch["input_ids"].shape[1] % 8 == 0
    ids, response = unpadded(batch, 0)
    x, y = encode(tokenizer, "review 1:"), encode(tokenizer, "the book was great")
    assert ids == [tokenizer.bos_token_id, *x, *y]
    assert sum(response) == len(y)


def test_split_and_concat_errors(tokenizer, preferences):
    pair = PreferenceCollator(tokenizer)(preferences[:2])
    with pytest.raises(ValueError, match="which"):
        split_pair_batch(pair, "both")
    with pytest.raises(ValueError, match="chosen_"):
        split_pair_batch({"input_ids": pair["chosen_input_ids"]}, "chosen")
    bad = dict(pair)
    bad["rejected_input_ids"] = torch.cat([bad["rejected_input_ids"]] * 2, dim=1)
    with pytest.raises(ValueError, match="rejected_input_ids"):
        concat_pair_batch(bad)


# --------------------------------------------------------------------------- truncation


def test_prompt_truncation_sides_and_counts(tokenizer):
    prompt = "review 5: what did you think of the film? be honest. be honest. be honest."
    response = "the film was moving"
    x, y = encode(tokenizer, prompt), [*encode(tokenizer, response), tokenizer.eos_token_id]
    max_length = 2 * len(y) + 2  # the response fits; the prompt keeps max_length - |y| tokens
    keep = max_length - len(y)
    assert len(x) > keep
    for side in ("left", "right"):
        collator = CompletionCollator(tokenizer, max_length=max_length, truncation_side=side)
        batch = collator([Completion(prompt, response, "d")])
        ids, mask = unpadded(batch, 0)
        kept_prompt = [t for t, m in zip(ids, mask, strict=True) if not m]
        assert kept_prompt == (x[-keep:] if side == "left" else x[:keep])
        assert [t for t, m in zip(ids, mask, strict=True) if m] == y
        stats = collator.truncation_stats
        assert stats == TruncationStats(1, 1, 0, len(x) - keep, 0)
        assert "1/1 prompts truncated" in stats.summary()
        assert collator.reset_stats().n_sequences == 1
        assert collator.truncation_stats.n_sequences == 0


def test_long_response_is_cut_at_the_end_and_prompt_keeps_half(tokenizer):
    prompt = "review 2: what did you think of the blender?"
    response = " ".join(["the blender was sturdy"] * 6)
    x, y = encode(tokenizer, prompt), [*encode(tokenizer, response), tokenizer.eos_token_id]
    max_length = 16
    collator = CompletionCollator(tokenizer, max_length=max_length)
    ids, _mask = unpadded(collator([Completion(prompt, response, "d")]), 0)
    assert len(ids) == max_length
    kept_x = min(len(x), max_length // 2)
    assert ids[:kept_x] == x[-kept_x:]
    assert ids[kept_x:] == y[: max_length - kept_x]  # beginning kept, eos lost
    assert tokenizer.eos_token_id not in ids[kept_x:]
    stats = collator.truncation_stats
    assert stats.n_responses_truncated == 1
    assert stats.response_tokens_dropped == len(y) - (max_length - kept_x)
    assert stats.prompt_tokens_dropped == len(x) - kept_x


def test_max_prompt_length_and_seq2seq_limits(tokenizer):
    prompt = "review 9: what did you think of the novel? be honest. be honest."
    response = "the novel was sharp and i would buy it again"
    x, y = encode(tokenizer, prompt), [*encode(tokenizer, response), tokenizer.eos_token_id]
    causal = CompletionCollator(tokenizer, max_length=100, max_prompt_length=5)
    ids, _mask = unpadded(causal([Completion(prompt, response, "d")]), 0)
    assert ids == x[-5:] + y
    seq2seq = CompletionCollator(
        tokenizer, family="seq2seq", max_length=6, max_response_length=4, truncation_side="right"
    )
    batch = seq2seq([Completion(prompt, response, "d")])
    assert unpadded(batch, 0)[0] == x[:6]
    dec, _ = unpadded(batch, 0, "decoder_input_ids", "decoder_attention_mask")
    assert dec == [tokenizer.pad_token_id, *y[:4]]
    assert seq2seq.truncation_stats == TruncationStats(1, 1, 1, len(x) - 6, len(y) - 4)


WORDS = st.sampled_from(["the", "book", "was", "great", "awful", "review", "kettle", "1:", "?"])


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.lists(WORDS, min_size=1, max_size=30),
    response=st.lists(WORDS, min_size=1, max_size=30),
    max_length=st.integers(2, 40),
    max_prompt_length=st.one_of(st.none(), st.integers(1, 39)),
    side=st.sampled_from(["left", "right"]),
)
def test_truncation_invariants(tokenizer, prompt, response, max_length, max_prompt_length, side):
    if max_prompt_length is not None and max_prompt_length >= max_length:
        max_prompt_length = max_length - 1
    prompt_text, response_text = " ".join(prompt), " ".join(response)
    x = encode(tokenizer, prompt_text)
    y = [*encode(tokenizer, response_text), tokenizer.eos_token_id]
    collator = CompletionCollator(
        tokenizer, max_length=max_length, max_prompt_length=max_prompt_length, truncation_side=side
    )
    ids, mask = unpadded(collator([{"prompt": prompt_text, "response": response_text}]), 0)
    kept_x = [t for t, m in zip(ids, mask, strict=True) if not m]
    kept_y = [t for t, m in zip(ids, mask, strict=True) if m]
    assert len(ids) <= max_length and kept_y and kept_x
    assert kept_y == y[: len(kept_y)]
    assert kept_x == (x[len(x) - len(kept_x) :] if side == "left" else x[: len(kept_x)])
    if max_prompt_length is not None:
        assert len(kept_x) <= max_prompt_length
    if len(x) + len(y) <= max_length and (max_prompt_length or len(x)) >= len(x):
        assert (kept_x, kept_y) == (x, y)
    stats = collator.truncation_stats
    assert stats.prompt_tokens_dropped == len(x) - len(kept_x)
    assert stats.response_tokens_dropped == len(y) - len(kept_y)
    assert stats.n_prompts_truncated == int(len(kept_x) < len(x))
    assert stats.n_responses_truncated == int(len(kept_y) < len(y))


# ---------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"padding_side": "middle"}, "padding_side"),
        ({"truncation_side": "up"}, "truncation_side"),
        ({"family": "encoder"}, "family"),
        ({"max_length": 1}, "max_length"),
        ({"max_length": 8, "max_prompt_length": 8}, "max_prompt_length"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
    ],
)
def test_bad_options_are_named(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreferenceCollator(tokenizer, **kwargs)


def test_not_a_tokenizer():
    with pytest.raises(TypeError, match="tokenizer"):
        CompletionCollator("gpt2")


def test_empty_record_list(tokenizer):
    with pytest.raises(ValueError, match="non-empty"):
        PreferenceCollator(tokenizer)([])
    with pytest.raises(ValueError, match="non-empty"):
        CompletionCollator(tokenizer)("prompt")


def test_preference_records_and_mappings_agree(tokenizer):
    record = Preference("review 0:", "the book was great", "the book was dull", "d")
    collator = PreferenceCollator(tokenizer)
    a = collator([record])
    b = collator([record.to_trl()])
    assert all(torch.equal(a[k], b[k]) for k in a)
