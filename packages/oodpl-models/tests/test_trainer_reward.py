"""Reward-model trainer: BT / MultiTask / MORE against independent computations; resume."""

from __future__ import annotations

import pytest
import torch

from oodpl.core.losses import bradley_terry_loss
from oodpl.core.moo import min_norm_weights, source_gradients
from oodpl.core.records import Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.engine.distributed import global_batches
from oodpl.models.reward_model import RewardModel
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers.reward import (
    RewardTrainConfig,
    bt_head_gradients,
    group_by_source,
    reward_preference_metrics,
    source_bundles,
    train_reward_model,
)

ITEMS = ["book", "film", "kettle", "album", "lamp", "novel"]
GOOD = ["great", "lovely", "sturdy"]
BAD = ["awful", "boring", "broken"]


@pytest.fixture(scope="module")
def data():
    pairs = []
    for n, item in enumerate(ITEMS):
        for g, b in zip(GOOD, BAD, strict=True):
            source = ("shop", "blog", "forum")[n % 3]
            pairs.append(
                Preference(
                    f"about the {item}:", f" {item} is {g}", f" {item} is {b}", "toy", source
                )
            )
    pairs = pairs[:-2]  # unequal sources: shop 6, blog 6, forum 4
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    return train_bpe_tokenizer(texts, vocab_size=300, model_max_length=32), pairs


def _rm(tokenizer) -> RewardModel:
    return RewardModel.from_preset("pythia-tiny", tokenizer, seed=0)


def _engine(**kwargs) -> EngineConfig:
    return EngineConfig(**{"lr": 3e-3, "max_steps": 8, "micro_batch_size": 4, **kwargs})


def test_bt_first_step_loss_and_learning(data) -> None:
    tokenizer, pairs = data
    rm = _rm(tokenizer)
    collator = rm.preference_collator()
    first = [pairs[i] for i in global_batches(len(pairs), global_batch_size=4, seed=0, epoch=0)[0]]
    with torch.no_grad():
        chosen, rejected = rm.eval().preference_rewards(collator(first))
    expected = float(bradley_terry_loss(chosen, rejected))
    before = reward_preference_metrics(rm, pairs)
    result = train_reward_model(rm, pairs, engine=_engine(max_steps=12))
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    after = reward_preference_metrics(rm, pairs)
    assert after["bt_loss"] < before["bt_loss"]
    assert after["accuracy"] > before["accuracy"]


def test_closed_form_head_gradients_match_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(5, 1)
    feats = torch.randn(2 * 6, 5, generator=g)  # 3 sources x 2 pairs, chosen rows then rejected
    rewards = head(feats).squeeze(-1)
    chosen, rejected = rewards[:6], rewards[6:]
    losses = torch.stack(
        [
            bradley_terry_loss(chosen[2 * i : 2 * i + 2], rejected[2 * i : 2 * i + 2], 0.3)
            for i in range(3)
        ]
    )
    reference = source_gradients(losses, [head.weight, head.bias])
    ours = bt_head_gradients(chosen, rejected, feats[:6], feats[6:], 3, margin=0.3)
    torch.testing.assert_close(ours, reference[:, :5])
    torch.testing.assert_close(reference[:, 5], torch.zeros(3), atol=1e-7, rtol=0)  # bias cancels


def test_multitask_weights_are_source_sizes(data) -> None:
    tokenizer, pairs = data
    result = train_reward_model(
        _rm(tokenizer),
        pairs,
        RewardTrainConfig(objective="multitask"),
        engine=_engine(max_steps=2, micro_batch_size=2),
    )
    assert result.sources == ["blog", "forum", "shop"]
    record = result.history[0]
    assert [record[f"lambda/{s}"] for s in result.sources] == pytest.approx(
        [6 / 16, 4 / 16, 6 / 16]
    )
    weighted = sum(record[f"lambda/{s}"] * record[f"loss/{s}"] for s in result.sources)
    assert record["loss"] == pytest.approx(weighted, rel=1e-6)


def test_more_weights_are_min_norm_of_head_gradients(data) -> None:
    """Step-1 λ == min-norm weights of autograd head gradients on the first bundles."""
    tokenizer, pairs = data
    rm = _rm(tokenizer)
    groups = group_by_source(pairs, "source")
    bundles = source_bundles(groups, seed=0)
    first = [
        bundles[i] for i in global_batches(len(bundles), global_batch_size=2, seed=0, epoch=0)[0]
    ]
    batch = rm.preference_collator()([b[i] for i in range(3) for b in first])
    rm.train()
    feats: dict = {}
    handle = rm.value_head.register_forward_hook(lambda m, i, o: feats.__setitem__("f", i[0]))
    rm.preference_rewards(batch)  # captures the pooled features
    handle.remove()
    f = feats["f"].detach()
    head = rm.value_head
    r = head(f).squeeze(-1)
    losses = torch.stack(
        [bradley_terry_loss(r[2 * i : 2 * i + 2], r[6 + 2 * i : 6 + 2 * i + 2]) for i in range(3)]
    )
    expected = min_norm_weights(source_gradients(losses, [head.weight, head.bias]))
    result = train_reward_model(
        rm,
        pairs,
        RewardTrainConfig(objective="more"),
        engine=_engine(max_steps=1, micro_batch_size=2),
    )
    got = [result.history[0][f"lambda/{s}"] for s in result.sources]
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert sum(got) == pytest.approx(1.0)


@pytest.mark.parametrize("objective", ["bt", "more"])
def test_resume_reproduces_uninterrupted_training(data, tmp_path, objective) -> None:
    """Acceptance 5 for RM training (torch backend, exact): MORE also restores its momentum."""
    tokenizer, pairs = data
    config = RewardTrainConfig(objective=objective, more_momentum=0.5, more_normalize=True)
    engine = _engine(max_steps=4, micro_batch_size=2, warmup_steps=1, scheduler="linear")
    full = _rm(tokenizer)
    full_run = train_reward_model(
        full, pairs, config, engine=engine, checkpoint_dir=tmp_path, checkpoint_every=2
    )
    resumed = _rm(tokenizer)
    tail = train_reward_model(
        resumed, pairs, config, engine=engine, resume_from=tmp_path / "step-00000002"
    )
    assert tail.history == full_run.history[2:]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_reward_trainer_input(data) -> None:
    tokenizer, pairs = data
    with pytest.raises(ValueError, match="objective"):
        RewardTrainConfig(objective="ranknet")
    with pytest.raises(ValueError, match="more_momentum"):
        RewardTrainConfig(more_momentum=0.0)
    with pytest.raises(ValueError, match=r"Preference\.domain"):
        train_reward_model(
            _rm(tokenizer), pairs, RewardTrainConfig(objective="more", group_by="domain")
        )
    with pytest.raises(TypeError, match="reward_model"):
        train_reward_model(torch.nn.Linear(2, 1), pairs)  # type: ignore[arg-type]
