"""Prefix-shared packing: layout checked by brute force, forward results and gradients equal to
the padded path (≤ 1e-5, float32), on the fast attention path and the explicit-mask fallback."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.records import Preference
from oodpl.models.collate import TokenizedPreference
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.shared_prefix import (
    is_shared_prefix_batch,
    pack_shared_prefix,
    packed_layout,
    shared_prefix_mask,
)
from oodpl.models.shared_prefix_forward import (
    SHARED_PREFIX_ATTENTION,
    shared_prefix_attention_forward,
)

CAUSAL = ("pythia-tiny", "gemma-tiny")


def _records() -> list[Preference]:
    return [
        Preference("what did you think of the kettle?", "great", "awful and slow", "k"),
        Preference("the book?", "the book was great fun", "the book was dull", "b"),  # common start
        Preference("the film?", "good", "good but long", "f"),  # chosen is a prefix of rejected
        Preference("the album, honestly?", "it was sharp", "it was sharp!", "a"),  # near-identical
        Preference("a?", "moving and sharp and reliable", "no", "a"),
    ]


def _sequence_index(batch, pair: int, which: str, position: int) -> int:
    """Packed index of ``position`` of pair ``pair``'s chosen / rejected sequence (layout rule)."""
    start = int(batch["segment_bounds"][pair])
    shared, tail_w, _ = batch["branch_lengths"][pair].tolist()
    if which == "chosen" or position < shared:
        return start + position
    return start + tail_w + position


def _check_layout(items: list[TokenizedPreference], batch) -> None:
    ids = batch["shared_input_ids"][0].tolist()
    positions = batch["shared_position_ids"][0].tolist()
    mask = shared_prefix_mask(batch)[0, 0]
    n = len(items)
    targets = sorted(
        zip(
            batch["target_owner"].tolist(),
            batch["target_index"].tolist(),
            batch["predictor_index"].tolist(),
            strict=True,
        )
    )
    expected_targets = []
    for b, item in enumerate(items):
        for slot, which in enumerate(("chosen", "rejected")):
            prompt, response = getattr(item, which)
            sequence = prompt + response
            index = [_sequence_index(batch, b, which, p) for p in range(len(sequence))]
            assert [ids[i] for i in index] == sequence
            assert [positions[i] for i in index] == list(range(len(sequence)))
            assert int(batch["reward_index"][slot * n + b]) == index[-1]
            for p, i in enumerate(index):  # token i sees exactly its own sequence up to itself
                seen = set(torch.nonzero(mask[i]).flatten().tolist())
                assert seen == set(index[: p + 1])
            for p in range(len(prompt), len(sequence)):
                expected_targets.append((slot * n + b, index[p], index[p - 1]))
    assert targets == sorted(expected_targets)
    assert len(ids) == int(batch["branch_lengths"].sum())


def _pair(prompt: list[int], chosen: list[int], rejected: list[int], index: int = 0):
    return TokenizedPreference((prompt, chosen), (prompt, rejected), index)


tokens = st.lists(st.integers(3, 6), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(tokens, tokens, tokens), min_size=1, max_size=4))
def test_layout_brute_force(triples) -> None:
    items = [_pair(x, y_w, y_l, i) for i, (x, y_w, y_l) in enumerate(triples)]
    batch = pack_shared_prefix(items)
    assert is_shared_prefix_batch(batch)
    _check_layout(items, batch)


def test_layout_shares_the_prompt_and_common_response_start() -> None:
    batch = pack_shared_prefix([_pair([1, 2, 3], [4, 5, 6, 9], [4, 5, 7, 9])])
    assert batch["branch_lengths"].tolist() == [[5, 2, 2]]  # x ⊕ "4 5" once
    assert batch["shared_position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 6]
    same = pack_shared_prefix([_pair([1, 2], [4, 5], [4, 5])])
    assert same["branch_lengths"].tolist() == [[3, 1, 1]]  # each sequence keeps its last token
    # different prompts (cut differently by truncation) share only their common start
    different = pack_shared_prefix([TokenizedPreference(([1, 2], [4]), ([8, 2], [4]))])
    assert different["branch_lengths"].tolist() == [[0, 3, 3]]


def test_layout_errors() -> None:
    with pytest.raises(ValueError, match="items is empty"):
        pack_shared_prefix([])
    with pytest.raises(ValueError, match="record 7: a packed causal sequence needs"):
        pack_shared_prefix([TokenizedPreference(([], [4]), ([1], [4]), 7)])


@pytest.mark.parametrize("preset", CAUSAL)
def test_rewards_and_gradients_equal_padded(tokenizer, preset) -> None:
    model = RewardModel.from_preset(preset, tokenizer, seed=0, lora=LoraSpec(r=4))
    assert packed_layout(model) == "shared_prefix"
    collator = model.preference_collator()
    items = collator.tokenize(_records())
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for batch in (collator(items), pack_shared_prefix(items)):
        chosen, rejected = model.preference_rewards(batch)
        loss = torch.nn.functional.softplus(rejected - chosen).sum() + 0.1 * chosen.square().sum()
        results.append((chosen, rejected, torch.autograd.grad(loss, params)))
    (c0, r0, g0), (c1, r1, g1) = results
    torch.testing.assert_close(c1, c0, rtol=0, atol=1e-5)
    torch.testing.assert_close(r1, r0, rtol=0, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", CAUSAL)
def test_logps_and_gradients_equal_padded(tokenizer, preset) -> None:
    policy = Policy.from_preset(preset, tokenizer, seed=0)
    collator = policy.preference_collator()
    items = collator.tokenize(_records())
    params = [p for p in policy.parameters() if p.requires_grad][:6]
    results = []
    for batch in (collator(items), pack_shared_prefix(items)):
        out = policy.preference_logps(batch)
        loss = (out[0] / out[1]).sum() - 0.3 * out[2].sum()
        results.append((out, torch.autograd.grad(loss, params)))
    (out0, g0), (out1, g1) = results
    for a, b in zip(out1, out0, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_mask_fallback_under_activation_checkpointing(tokenizer, implementation) -> None:
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0)
    collator = policy.preference_collator()
    items = collator.tokenize(_records())
    expected = policy.preference_logps(collator(items))
    policy.lm.config._attn_implementation = implementation
    policy.lm.gradient_checkpointing_enable()
    policy.train()
    calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *_: calls.append(1))
    try:
        out = policy.preference_logps(pack_shared_prefix(items))
    finally:
        hook.remove()
    assert calls  # the model ran
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=1e-5)


def test_attention_function_refuses_unpacked_calls() -> None:
    q = torch.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match=SHARED_PREFIX_ATTENTION):
        shared_prefix_attention_forward(torch.nn.Identity(), q, q, q, None)


@pytest.mark.parametrize("preset", CAUSAL)
def test_pairs_with_equal_branch_lengths_batch_together(tokenizer, preset) -> None:
    """Fixed lengths: every pair has the same (C, R_w, R_l), attention runs batched."""
    policy = Policy.from_preset(preset, tokenizer, seed=0)
    collator = policy.preference_collator()
    prompt = [5, 6, 7, 8]
    items = [
        TokenizedPreference((prompt, [30 + i, 10, 2]), (prompt, [40, 50 + i, 2]), i)
        for i in range(3)
    ]
    items.append(TokenizedPreference((prompt, [20, 2]), (prompt, [21, 22, 23, 2]), 3))
    for subset in (items[:3], items):  # all pairs alike (views of one [B, S] block); mixed
        batch = pack_shared_prefix(subset)
        assert batch["branch_lengths"].tolist()[:3] == [[4, 3, 3]] * 3
        expected = policy.preference_logps(collator(subset))
        for got, want in zip(policy.preference_logps(batch), expected, strict=True):
            torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=1e-5)
