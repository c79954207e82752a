"""Tokenise-once, packed/padded/bucketed batching in the RM and DPO trainers, the reference
log-prob cache and the adapters-off LoRA reference: every path against the plain padded one."""

from __future__ import annotations

import pytest
import torch

from oodpl.core.records import Preference
from oodpl.models.bucketing import padding_fraction as bucketing_padding_fraction
from oodpl.models.collate import TokenizedPreference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.packing import (
    PackedPreferenceCollator,
    pack_pair_batch,
    pack_tokenized,
    packed_saving,
)
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers.dpo import DPOConfig, adapters_are_identity, train_dpo
from oodpl.models.trainers.pair_batching import packing_unavailable, plan_pair_batches
from oodpl.models.trainers.reward import (
    RewardTrainConfig,
    reward_preference_metrics,
    train_reward_model,
)

CAUSAL = ("pythia-tiny", "gemma-tiny")


def make_preferences(n: int) -> list[Preference]:
    """``n`` pairs whose responses vary in length (1-8 extra words)."""
    return [
        Preference(
            f"review {i}: the kettle?",
            "the kettle was great" + " and sturdy" * (i % 5),
            "the kettle was awful" + " sadly" * ((3 * i + 1) % 8),
            "kitchen",
        )
        for i in range(n)
    ]


def _engine(**kwargs) -> EngineConfig:
    return EngineConfig(**{"lr": 5e-3, "max_steps": 4, "micro_batch_size": 4, **kwargs})


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- tokenise once --------------------------------------------------------------------------------
def test_pretokenized_items_collate_to_the_same_batch(tokenizer, preferences) -> None:
    for preset in ("pythia-tiny", "t5-tiny"):
        collator = RewardModel.from_preset(preset, tokenizer).preference_collator(max_length=24)
        items = collator.tokenize(preferences)
        assert [item.index for item in items] == list(range(len(preferences)))
        _same_tensors(collator(items), collator(preferences))


def test_tokenize_counts_truncation_once(tokenizer, preferences) -> None:
    collator = RewardModel.from_preset("pythia-tiny", tokenizer).preference_collator(max_length=12)
    items = collator.tokenize(preferences)
    stats = collator.reset_stats()
    assert stats.n_sequences == 2 * len(preferences) and stats.n_truncated > 0
    collator(items)  # padding pre-tokenised items tokenises nothing
    assert collator.truncation_stats.n_sequences == 0


def test_pack_tokenized_equals_pack_of_padded_batch(tokenizer, preferences) -> None:
    collator = Policy.from_preset("pythia-tiny", tokenizer).preference_collator()
    items = collator.tokenize(preferences[:6])
    _same_tensors(pack_tokenized(items), pack_pair_batch(collator(items)))


def test_auto_packing_rule(tokenizer) -> None:
    collator = Policy.from_preset("pythia-tiny", tokenizer).preference_collator()
    prompt, short, long_ = list(range(3, 63)), [5] * 10, [6] * 70

    def pair(chosen, rejected):
        return TokenizedPreference((prompt, chosen), (prompt, rejected))

    uneven = [pair(short, long_), pair(long_, short)]
    even = [pair([5] * 40, [6] * 40)] * 2

    def padding_fraction(items):  # of one padded pair batch holding all items
        lengths = [n for item in items for n in item.lengths()]
        return bucketing_padding_fraction(lengths, [list(range(len(lengths)))])

    assert padding_fraction(uneven) == pytest.approx(1 - (70 + 130) / (2 * 130))
    assert padding_fraction(even) == 0.0
    assert packed_saving(uneven, "sequences") == pytest.approx(padding_fraction(uneven))
    assert packed_saving(even, "sequences") == 0.0
    assert packed_saving(even, "shared_prefix") == pytest.approx(60 / 200)  # prompt once
    sequences = PackedPreferenceCollator(collator, mode="auto", layout="sequences")
    shared = PackedPreferenceCollator(collator, mode="auto", layout="shared_prefix")
    assert "packed_input_ids" in sequences(uneven)
    assert "chosen_input_ids" in sequences(even)  # nothing to save: padded
    assert "shared_input_ids" in shared(even)  # the second prompt copy is saved
    tiny = [TokenizedPreference(([3, 4], [5]), ([3, 4], [6, 6, 6]))] * 2  # saving, but short
    assert packed_saving(tiny, "sequences") > 0.1
    assert "chosen_input_ids" in sequences(tiny)
    assert (sequences.n_packed, sequences.n_padded) == (1, 2)


def test_packing_availability_and_errors(tokenizer, preferences) -> None:
    t5 = RewardModel.from_preset("t5-tiny", tokenizer)
    assert "encoder-decoder" in packing_unavailable(t5)
    assert packing_unavailable(RewardModel.from_preset("pythia-tiny", tokenizer)) is None
    with pytest.raises(ValueError, match=r"RewardTrainConfig.packing='always' but t5"):
        plan_pair_batches(t5, preferences, RewardTrainConfig(packing="always"))
    with pytest.raises(ValueError, match=r"RewardTrainConfig.packing must be one of"):
        RewardTrainConfig(packing="yes")
    with pytest.raises(ValueError, match=r"DPOConfig.packing must be one of"):
        DPOConfig(packing=True)
    with pytest.raises(TypeError, match=r"group_by_length must be a bool"):
        DPOConfig(group_by_length="yes")
    plan = plan_pair_batches(t5, preferences, RewardTrainConfig())
    assert not plan.packs and plan.order is not None  # T5 falls back to length buckets


def test_bucketed_order_groups_lengths(tokenizer) -> None:
    records = make_preferences(32)
    model = RewardModel.from_preset("t5-tiny", tokenizer)
    plan = plan_pair_batches(model, records, RewardTrainConfig())
    lengths = [max(item.lengths()) for item in plan.items]
    batches = plan.order(len(records), global_batch_size=4, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(32))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    shuffled = plan_pair_batches(model, records, RewardTrainConfig(group_by_length=False))
    assert shuffled.order is None
    from oodpl.models.engine.distributed import global_batches

    plain = global_batches(32, global_batch_size=4, seed=0, epoch=0)
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain)
    assert spread < plain_spread
    assert batches == plan.order(len(records), global_batch_size=4, seed=0, epoch=0)


# -- trainers: every path trains the same model ------------------------------------------------
@pytest.mark.parametrize("preset", CAUSAL)
def test_reward_trainer_packed_equals_padded(tokenizer, preferences, preset) -> None:
    """Same batches, same first loss to float rounding; later steps agree to what Adam makes of
    that rounding (parameters with a zero true gradient, e.g. the value-head bias, which cancels
    in r_w - r_l, take lr-sized steps of random sign), so the trained reward *differences* are
    compared, not the weights."""
    histories, margins = {}, {}
    probe = preferences[::3]
    for packing in ("always", "never", "auto"):
        model = RewardModel.from_preset(preset, tokenizer, seed=0)
        config = RewardTrainConfig(packing=packing, group_by_length=False)
        result = train_reward_model(model, preferences, config, engine=_engine())
        histories[packing] = [r["loss"] for r in result.history]
        out = model.compute_rewards([model.preference_collator()(probe)])
        margins[packing] = out["chosen_rewards"] - out["rejected_rewards"]
    assert histories["always"][-1] < histories["always"][0]
    for packing in ("always", "auto"):
        assert histories[packing][0] == pytest.approx(histories["never"][0], abs=1e-6)
        assert histories[packing] == pytest.approx(histories["never"], abs=1e-4)
        torch.testing.assert_close(margins[packing], margins["never"], rtol=0, atol=1e-3)


def test_reward_metrics_packed_equal_padded(tokenizer, preferences) -> None:
    model = RewardModel.from_preset("pythia-tiny", tokenizer, seed=0)
    packed = reward_preference_metrics(model, preferences, batch_size=5)
    collator = model.preference_collator()
    out = model.compute_rewards([collator(preferences)])
    margin = out["chosen_rewards"].double() - out["rejected_rewards"].double()
    assert packed["accuracy"] == pytest.approx(float((margin > 0).double().mean()))
    assert packed["bt_loss"] == pytest.approx(
        float(torch.nn.functional.softplus(-margin).mean()), abs=1e-5
    )


@pytest.mark.parametrize("reference", ["precomputed", "model"])
def test_dpo_trainer_packed_equals_padded(tokenizer, preferences, reference) -> None:
    histories = {}
    for packing in ("always", "never"):
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0)
        config = DPOConfig(beta=0.5, reference=reference, packing=packing, group_by_length=False)
        result = train_dpo(policy, preferences, config, engine=_engine())
        histories[packing] = [(r["loss"], r["margin"]) for r in result.history]
    assert histories["always"][0][1] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert histories["always"][-1][0] < histories["always"][0][0]
    flat = [x for pair in histories["always"] for x in pair]
    assert flat == pytest.approx([x for pair in histories["never"] for x in pair], abs=1e-4)


def test_dpo_t5_trains_padded_in_length_buckets(tokenizer, preferences) -> None:
    policy = Policy.from_preset("t5-tiny", tokenizer, seed=0)
    result = train_dpo(policy, preferences, DPOConfig(beta=0.5), engine=_engine())
    losses = [r["loss"] for r in result.history]
    assert losses[0] == pytest.approx(0.6931472, abs=1e-5) and losses[-1] < losses[0]


# -- reference log-prob cache -------------------------------------------------------------------
def test_dpo_reference_cache_is_reused(tokenizer, preferences, tmp_path) -> None:
    config = DPOConfig(beta=0.5, reference_cache_dir=str(tmp_path / "ref"))
    calls = []

    def run() -> list[float]:
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0)
        embeddings = policy.lm.get_input_embeddings()  # runs once per forward pass
        hook = embeddings.register_forward_hook(lambda *_: calls.append(1))
        try:
            result = train_dpo(policy, preferences, config, engine=_engine(max_steps=2))
        finally:
            hook.remove()
        return [r["loss"] for r in result.history]

    first = run()
    forwards_first = len(calls)
    files = list((tmp_path / "ref").glob("ref_logps-*.safetensors"))
    assert len(files) == 1
    calls.clear()
    second = run()
    # 16 pairs: one packed reference forward (reference_batch_size 32) + one forward per step
    assert (forwards_first, len(calls)) == (3, 2)
    assert second == first
    uncached = train_dpo(
        Policy.from_preset("pythia-tiny", tokenizer, seed=0),
        preferences,
        DPOConfig(beta=0.5),
        engine=_engine(max_steps=2),
    )
    assert [r["loss"] for r in uncached.history] == pytest.approx(first, abs=1e-6)
    with pytest.raises(ValueError, match="reference_cache_dir needs reference='precomputed'"):
        DPOConfig(reference="model", reference_cache_dir=str(tmp_path))


# -- LoRA reference with adapters switched off ----------------------------------------------------
def test_lora_dpo_reference_uses_adapters_off_without_a_copy(tokenizer, preferences) -> None:
    lora = LoraSpec(r=4)
    fresh = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=lora)
    assert adapters_are_identity(fresh)
    histories = {}
    copies: list[int] = []
    original = Policy.reference_copy

    def counting_copy(self: Policy) -> Policy:
        copies.append(1)
        return original(self)

    for name in ("adapters_off", "precomputed"):
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=lora)
        reference = "model" if name == "adapters_off" else "precomputed"
        Policy.reference_copy = counting_copy  # type: ignore[method-assign]
        try:
            result = train_dpo(
                policy, preferences, DPOConfig(beta=0.5, reference=reference), engine=_engine()
            )
        finally:
            Policy.reference_copy = original  # type: ignore[method-assign]
        histories[name] = [(r["loss"], r["margin"]) for r in result.history]
        assert not adapters_are_identity(policy)  # trained
    assert copies == []  # no deep copy of the policy was made
    flat = [x for pair in histories["adapters_off"] for x in pair]
    assert flat == pytest.approx([x for pair in histories["precomputed"] for x in pair], abs=1e-5)


def test_adapters_are_identity_detects_trained_head_copy(tokenizer) -> None:
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
    assert adapters_are_identity(policy)
    copies = [n for n, p in policy.named_parameters() if "modules_to_save" in n]
    assert copies  # the default LoraSpec trains an LM-head copy
    with torch.no_grad():
        dict(policy.named_parameters())[copies[0]].add_(1e-3)
    assert not adapters_are_identity(policy)
    assert not adapters_are_identity(Policy.from_preset("pythia-tiny", tokenizer, seed=0))
