"""HPL trainer: PL accuracy on its training pairs rises; the loss is L_out; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from oodpl.core.losses import policy_preference_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import policy_preference_metrics
from oodpl.models.trainers.hpl import HPLConfig, hpl_loss_fn, train_hpl

ITEMS = ["book", "film", "kettle", "album", "lamp", "novel"]
GOOD = ["great", "lovely", "sturdy"]
BAD = ["awful", "boring", "broken"]


@pytest.fixture(scope="module")
def data():
    pairs = [
        Preference(f"review of the {item}:", f" the {item} was {g}", f" the {item} was {b}", "toy")
        for item in ITEMS
        for g, b in zip(GOOD, BAD, strict=True)
    ]
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    return train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64), pairs


@pytest.mark.parametrize("preset", ["pythia-tiny", "t5-tiny"])
def test_hpl_raises_pl_accuracy_on_training_pairs(data, preset, tmp_path):
    tokenizer, pairs = data
    policy = Policy.from_preset(preset, tokenizer, seed=0, lora=LoraSpec(r=4))
    before = policy_preference_metrics(policy, pairs)
    result = train_hpl(
        policy,
        pairs,
        engine=EngineConfig(lr=1e-2, micro_batch_size=6, max_steps=20, seed=1),
        log_path=tmp_path / "hpl.jsonl",
    )
    after = policy_preference_metrics(policy, pairs)
    print(f"{preset}: PL accuracy {before['pl_accuracy']:.3f} -> {after['pl_accuracy']:.3f}")
    assert after["pl_accuracy"] >= 0.9 and after["pl_accuracy"] > before["pl_accuracy"] + 0.2
    assert after["pl_loss"] < before["pl_loss"]
    logged = [json.loads(x) for x in (tmp_path / "hpl.jsonl").read_text().splitlines()]
    assert len(logged) == 20 and {"pl_accuracy", "margin", "loss"} <= set(logged[0])
    assert result.series("pl_accuracy")[-1] >= 0.5


def test_hpl_loss_fn_is_the_policy_preference_loss(data):
    tokenizer, pairs = data
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
    batch = policy.preference_collator()(pairs[:5])
    loss, metrics = hpl_loss_fn()(policy, batch)
    chosen, chosen_n, rejected, rejected_n = policy.preference_logps(batch)
    # independent: -log sigmoid of the mean-token log-prob difference, pair by pair
    delta = chosen / chosen_n - rejected / rejected_n
    torch.testing.assert_close(loss, torch.nn.functional.softplus(-delta).mean())
    torch.testing.assert_close(loss, policy_preference_loss(chosen, chosen_n, rejected, rejected_n))
    assert metrics["pl_accuracy"].item() == pytest.approx(float((delta > 0).float().mean()))
    assert metrics["margin"].item() == pytest.approx(float(delta.detach().mean()), abs=1e-6)


def test_hpl_bad_input_names_the_argument(data):
    tokenizer, pairs = data
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
    with pytest.raises(TypeError, match=r"preferences\[0\]"):
        train_hpl(policy, [Completion("p", "y", "toy")])
    with pytest.raises(TypeError, match="config must be an HPLConfig"):
        train_hpl(policy, pairs, config=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"HPLConfig\.max_length"):
        HPLConfig(max_length=0)
