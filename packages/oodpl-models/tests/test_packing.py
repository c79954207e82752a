"""Packed (padding-free) pair batches give the padded path's rewards, log-probs and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.losses import bradley_terry_loss, dpo_loss
from oodpl.core.records import Preference
from oodpl.models.collate import concat_pair_batch
from oodpl.models.lora import LoraSpec
from oodpl.models.packed_forward import (
    attention_mask_for,
    packed_logps,
    packed_preference_logps,
    packed_rewards,
    supports_varlen,
    varlen_attention_forward,
)
from oodpl.models.packing import (
    PackedPreferenceCollator,
    block_diagonal_causal_mask,
    is_packed_batch,
    pack_pair_batch,
    pack_sequences,
    sequence_index,
)
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel

TOL = 1e-5
CAUSAL = ("pythia-tiny", "gemma-tiny")
MODES = ("varlen", "block_diagonal", "position_ids")


def _short_pairs() -> list[Preference]:
    """Variable-length pairs with short responses (|Σ log π| stays < 64, where float32 sums
    resolve 1e-5), lengths 1..~14 tokens on both sides."""
    words = ["good", "bad", "fine", "the kettle was great", "meh", "it broke", "ok then", "no"]
    out = []
    for i in range(6):
        prompt = "review: " + "the book " * (i % 4) + f"item {i}?"
        out.append(Preference(prompt, words[i], words[(i + 3) % 8], domain="d"))
    return out


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every trainable weight (LoRA B included, which starts at 0) off its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.trainable_parameters().values():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


_MODELS: dict[tuple[str, bool, str], tuple[RewardModel, Policy]] = {}


def _models(tokenizer, arch: str, lora: bool, attn: str = "sdpa") -> tuple[RewardModel, Policy]:
    key = (arch, lora, attn)
    if key not in _MODELS:
        spec = LoraSpec(r=4) if lora else None
        reward = RewardModel.from_preset(arch, tokenizer, lora=spec, attn_implementation=attn)
        policy = Policy.from_preset(arch, tokenizer, lora=spec, attn_implementation=attn, seed=1)
        _perturb(reward, 0)
        _perturb(policy, 1)
        reward.eval()
        policy.eval()
        _MODELS[key] = (reward, policy)
    return _MODELS[key]


# -- structure ---------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_pack_sequences_drops_padding_and_restarts_positions(side):
    rows = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    width = 5
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        sl = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, sl] = torch.tensor(row)
        mask[i, sl] = 1
    packed = pack_sequences(ids, mask, mask.clone())
    assert packed["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert packed["packed_position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2, 3, 4]]
    assert packed["cu_seqlens"].tolist() == [0, 3, 4, 9]
    assert packed["cu_seqlens"].dtype == torch.int32
    assert sequence_index(packed["cu_seqlens"]).tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=7),
    extra=st.integers(0, 3),
    side=st.sampled_from(["left", "right"]),
)
def test_pack_sequences_property(lengths, extra, side):
    """Packing keeps every real token in row order, positions count 0..L-1, boundaries add up."""
    width = max(lengths) + extra
    ids = torch.full((len(lengths), width), -1, dtype=torch.long)
    mask = torch.zeros_like(ids)
    rows = []
    for i, n in enumerate(lengths):
        row = [100 * i + j for j in range(n)]
        rows.append(row)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl], mask[i, sl] = torch.tensor(row), 1
    packed = pack_sequences(ids, mask, mask)
    assert packed["packed_input_ids"][0].tolist() == [t for r in rows for t in r]
    assert packed["packed_position_ids"][0].tolist() == [j for n in lengths for j in range(n)]
    assert packed["cu_seqlens"].diff().tolist() == lengths
    mask4d = block_diagonal_causal_mask(packed["cu_seqlens"])[0, 0]
    assert int(mask4d.sum()) == sum(n * (n + 1) // 2 for n in lengths)


def test_block_diagonal_mask_matches_brute_force():
    cu = torch.tensor([0, 2, 3, 6], dtype=torch.int32)
    owner = [0, 0, 1, 2, 2, 2]
    mask = block_diagonal_causal_mask(cu)
    assert mask.shape == (1, 1, 6, 6)
    for i in range(6):
        for j in range(6):
            assert bool(mask[0, 0, i, j]) == (owner[i] == owner[j] and j <= i)


def test_pack_pair_batch_matches_unpadded_tokens(tokenizer):
    records = _short_pairs()
    collator = RewardModel.from_preset("pythia-tiny", tokenizer).preference_collator(
        padding_side="left"
    )
    batch = collator(records)
    batch["reference_chosen_logps"] = torch.arange(len(records), dtype=torch.float64)
    packed = pack_pair_batch(batch)
    assert is_packed_batch(packed)
    assert int(packed["n_pairs"]) == len(records)
    stacked, _ = concat_pair_batch(batch)
    expected = [
        stacked["input_ids"][r][stacked["attention_mask"][r].bool()].tolist()
        for r in range(2 * len(records))
    ]
    flat = [t for row in expected for t in row]
    assert packed["packed_input_ids"][0].tolist() == flat
    assert packed["packed_input_ids"].numel() == int(stacked["attention_mask"].sum())
    assert torch.equal(packed["reference_chosen_logps"], batch["reference_chosen_logps"])
    via_collator = PackedPreferenceCollator(collator)(records)
    assert torch.equal(via_collator["packed_input_ids"], packed["packed_input_ids"])


# -- numerics: packed == padded ----------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("causal_arch", CAUSAL)
def test_packed_rewards_and_logps_equal_padded(tokenizer, causal_arch, lora):
    reward, policy = _models(tokenizer, causal_arch, lora)
    records = _short_pairs()
    with torch.no_grad():
        for side in ("left", "right"):
            batch = reward.preference_collator(padding_side=side)(records)
            packed = pack_pair_batch(batch)
            want_rewards = reward.preference_rewards(batch)
            want_logps = policy.preference_logps(batch)
            assert float(want_logps[0].abs().max()) < 64  # float32 sums resolve 1e-5 here
            for mode in MODES:
                got_rewards = packed_rewards(reward, packed, attention=mode)
                for want, got in zip(want_rewards, got_rewards, strict=True):
                    assert (want - got).abs().max() <= TOL, (side, mode)
                got_logps = packed_preference_logps(policy, packed, attention=mode, chunk_size=5)
                for want, got in zip(want_logps, got_logps, strict=True):
                    assert want.dtype == got.dtype
                    assert (want - got).abs().max() <= TOL, (side, mode)


@pytest.mark.parametrize("causal_arch", CAUSAL)
def test_packed_equals_padded_with_eager_attention(tokenizer, causal_arch):
    reward, policy = _models(tokenizer, causal_arch, False, "eager")
    batch = reward.preference_collator(padding_side="right")(_short_pairs())
    packed = pack_pair_batch(batch)
    mask = attention_mask_for(reward.model, packed["cu_seqlens"], "block_diagonal")
    assert mask.dtype == torch.float32 and mask.shape[-1] == packed["packed_input_ids"].shape[1]
    assert attention_mask_for(reward.model, packed["cu_seqlens"]) is None  # auto: varlen
    with torch.no_grad():
        for mode in MODES:
            got = packed_rewards(reward, packed, attention=mode)
            want = reward.preference_rewards(batch)
            assert max(float((w - g).abs().max()) for w, g in zip(want, got, strict=True)) <= TOL
            got_lp = packed_logps(policy, packed, attention=mode)
            want_lp = policy.sequence_logps(concat_pair_batch(batch)[0])
            assert (got_lp[0] - want_lp[0]).abs().max() <= TOL
            assert torch.equal(got_lp[1], want_lp[1])


@pytest.mark.parametrize("mode", MODES)
def test_no_attention_across_sequences(tokenizer, mode):
    """Changing the tokens of sequence 0 leaves every other sequence's reward unchanged."""
    reward, _ = _models(tokenizer, "pythia-tiny", False)
    packed = pack_pair_batch(reward.preference_collator()(_short_pairs()))
    with torch.no_grad():
        before = torch.cat(packed_rewards(reward, packed, attention=mode))
        edited = dict(packed)
        ids = packed["packed_input_ids"].clone()
        end = int(packed["cu_seqlens"][1])
        ids[0, :end] = (ids[0, :end] + 7) % 400
        edited["packed_input_ids"] = ids
        after = torch.cat(packed_rewards(reward, edited, attention=mode))
    assert (before[0] - after[0]).abs() > 1e-4  # the edit matters for its own sequence
    assert torch.equal(before[1:], after[1:])


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("causal_arch", CAUSAL)
def test_gradients_packed_equal_padded(tokenizer, causal_arch, lora):
    reward, policy = _models(tokenizer, causal_arch, lora)
    records = _short_pairs()
    batch = reward.preference_collator(padding_side="left")(records)
    packed = pack_pair_batch(batch)

    def grads(module, loss):
        params = module.trainable_parameters()
        values = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {
            k: v if v is not None else torch.zeros_like(p)
            for (k, p), v in zip(params.items(), values, strict=True)
        }

    padded_bt = bradley_terry_loss(*reward.preference_rewards(batch))
    packed_bt = bradley_terry_loss(*packed_rewards(reward, packed))
    assert abs(float((padded_bt - packed_bt).detach())) <= TOL
    want, got = grads(reward, padded_bt), grads(reward, packed_bt)
    assert sum(float(g.abs().sum()) for g in want.values()) > 0
    for name in want:
        assert (want[name] - got[name]).abs().max() <= TOL, name

    reference = torch.full((len(records),), -20.0)
    chosen, _, rejected, _ = policy.preference_logps(batch)
    padded_dpo = dpo_loss(chosen, rejected, reference, reference - 1.0).loss
    chosen, _, rejected, _ = packed_preference_logps(policy, packed, chunk_size=3)
    packed_dpo = dpo_loss(chosen, rejected, reference, reference - 1.0).loss
    want, got = grads(policy, padded_dpo), grads(policy, packed_dpo)
    assert sum(float(g.abs().sum()) for g in want.values()) > 0
    for name in want:
        assert (want[name] - got[name]).abs().max() <= TOL, name


def test_auto_mode_and_attention_implementation_restored(tokenizer):
    reward, _ = _models(tokenizer, "pythia-tiny", False)
    assert supports_varlen(reward.model)
    assert supports_varlen(_models(tokenizer, "gemma-tiny", False)[0].model)
    packed = pack_pair_batch(reward.preference_collator()(_short_pairs()))
    config = reward.lm.config
    with torch.no_grad():
        packed_rewards(reward, packed, attention="varlen")
    assert config._attn_implementation == "sdpa"
    config.sliding_window = 4  # now varlen would be wrong: auto falls back to the mask
    try:
        assert not supports_varlen(reward.model)
        assert attention_mask_for(reward.model, packed["cu_seqlens"]) is not None
        with pytest.raises(ValueError, match="block_diagonal"):
            packed_rewards(reward, packed, attention="varlen")
    finally:
        del config.sliding_window
    assert config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="packed rows only"):
        varlen_attention_forward(None, *(torch.zeros(2, 1, 3, 4),) * 3, None)


def test_model_methods_and_trainer_loss_fns_accept_packed_batches(tokenizer):
    """Switching a trainer to the packed path = swapping its collator for a packed one."""
    from oodpl.models.trainers.dpo import DPOConfig, dpo_loss_fn
    from oodpl.models.trainers.reward import bt_loss_fn

    reward, policy = _models(tokenizer, "gemma-tiny", True)
    records = _short_pairs()
    padded = reward.preference_collator()(records)
    packed = PackedPreferenceCollator(reward.preference_collator())(records)
    with torch.no_grad():
        for got in (
            reward(packed),
            reward.functional_rewards(reward.trainable_parameters(), packed),
        ):
            for want, value in zip(reward.preference_rewards(padded), got, strict=True):
                assert (want - value).abs().max() <= TOL
        loss_padded, _ = bt_loss_fn()(reward, padded)
        loss_packed, _ = bt_loss_fn()(reward, packed)
        assert abs(float(loss_padded - loss_packed)) <= TOL
        for got in (
            policy(packed),
            policy.functional_sequence_logps(policy.trainable_parameters(), packed),
        ):
            for want, value in zip(policy.preference_logps(padded), got, strict=True):
                assert (want - value).abs().max() <= TOL
        for extra in (padded, packed):
            extra["reference_chosen_logps"] = torch.full((len(records),), -20.0)
            extra["reference_rejected_logps"] = torch.full((len(records),), -21.0)
        packed = pack_pair_batch(padded)  # extra keys carried over
        loss_fn = dpo_loss_fn(DPOConfig())
        assert abs(float(loss_fn(policy, padded)[0] - loss_fn(policy, packed)[0])) <= TOL
        reference_fn = dpo_loss_fn(DPOConfig(reference="model"), reference=policy)
        strip = lambda b: {k: v for k, v in b.items() if not k.startswith("reference_")}  # noqa: E731
        want = reference_fn(policy, strip(padded))[0]
        assert abs(float(reference_fn(policy, strip(packed))[0] - want)) <= TOL


def test_activation_checkpointing_gradients_packed_equal_padded(tokenizer):
    """Under activation checkpointing the backward re-runs the layers: auto must not pick the
    forward-only varlen swap, and gradients still match the padded path."""
    reward = RewardModel.from_preset("pythia-tiny", tokenizer, seed=7)
    _perturb(reward, 7)
    reward.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reward.train()
    batch = reward.preference_collator()(_short_pairs())
    packed = pack_pair_batch(batch)
    assert attention_mask_for(reward.model, packed["cu_seqlens"]) is not None
    with pytest.raises(ValueError, match="checkpointing"):
        packed_rewards(reward, packed, attention="varlen")
    params = reward.trainable_parameters()
    want = torch.autograd.grad(
        bradley_terry_loss(*reward.preference_rewards(batch)), list(params.values())
    )
    got = torch.autograd.grad(
        bradley_terry_loss(*packed_rewards(reward, packed)), list(params.values())
    )
    for name, w, g in zip(params, want, got, strict=True):
        assert (w - g).abs().max() <= TOL, name


# -- bad input ---------------------------------------------------------------------------------
def test_bad_input_names_the_problem(tokenizer):
    reward = RewardModel.from_preset("t5-tiny", tokenizer)
    t5_batch = reward.preference_collator()(_short_pairs())
    with pytest.raises(ValueError, match="seq2seq"):
        pack_pair_batch(t5_batch)
    with pytest.raises(ValueError, match="seq2seq"):
        PackedPreferenceCollator(reward.preference_collator())
    with pytest.raises(TypeError, match="collator"):
        PackedPreferenceCollator(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chosen_"):
        pack_pair_batch({"input_ids": torch.ones(1, 2, dtype=torch.long)})
    holes = torch.tensor([[1, 0, 1]])
    with pytest.raises(ValueError, match="holes"):
        pack_sequences(torch.ones(1, 3, dtype=torch.long), holes, torch.zeros(1, 3).long())
    with pytest.raises(ValueError, match="n_pairs"):
        packed_rewards(_models(tokenizer, "pythia-tiny", False)[0], {"cu_seqlens": holes})
    _, policy = _models(tokenizer, "pythia-tiny", False)
    packed = pack_pair_batch(policy.preference_collator()(_short_pairs()))
    with pytest.raises(ValueError, match="attention"):
        packed_logps(policy, packed, attention="dense")  # type: ignore[arg-type]
