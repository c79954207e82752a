"""SFT trainer: held-out NLL drops on tiny presets, the loss is the core SFT loss, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from oodpl.core.losses import sft_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig, build_engine
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import completion_nll
from oodpl.models.trainers.sft import SFTConfig, sft_loss_fn, train_sft

ITEMS = ["book", "film", "kettle", "album", "lamp", "novel", "chair", "phone"]
WORDS = ["great", "awful", "lovely", "boring", "sturdy", "broken"]


def _records(items, words) -> list[Completion]:
    return [
        Completion(f"review of the {item}:", f" the {item} was {word}", domain="toy")
        for item in items
        for word in words
    ]


@pytest.fixture(scope="module")
def data():
    train = _records(ITEMS[:6], WORDS)
    held_out = _records(ITEMS[6:], WORDS)
    texts = [c.prompt + c.response for c in train + held_out]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)
    return tokenizer, train, held_out


def _policy(tokenizer, preset="pythia-tiny"):
    return Policy.from_preset(preset, tokenizer, seed=0, lora=LoraSpec(r=4))


@pytest.mark.parametrize("preset", ["pythia-tiny", "t5-tiny"])
def test_sft_lowers_held_out_nll(data, preset, tmp_path):
    tokenizer, train, held_out = data
    policy = _policy(tokenizer, preset)
    before = completion_nll(policy, held_out)
    log = tmp_path / "sft.jsonl"
    result = train_sft(
        policy,
        train,
        engine=EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=25, seed=3),
        log_path=log,
    )
    after = completion_nll(policy, held_out)
    assert result.policy is policy
    assert after < before - 1.0, (before, after)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 26))
    assert records[-1]["loss"] < records[0]["loss"]
    assert result.series("loss") == [r["loss"] for r in records]


def test_sft_loss_fn_is_the_core_loss(data):
    tokenizer, train, _ = data
    policy = _policy(tokenizer)
    batch = policy.completion_collator()(train[:5])
    for normalize in ("token", "sequence"):
        loss, metrics = sft_loss_fn(normalize)(policy, batch)
        logps, n_tokens = policy.sequence_logps(batch)
        expected = (
            -logps.sum() / n_tokens.sum() if normalize == "token" else -(logps / n_tokens).mean()
        )
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(loss, sft_loss(logps, n_tokens, normalize=normalize))
        assert metrics["tokens"] == float(batch["response_mask"].sum())


def test_sft_continues_on_a_given_engine(data):
    tokenizer, train, _ = data
    policy = _policy(tokenizer)
    engine = build_engine(policy, EngineConfig(lr=1e-2, micro_batch_size=4, max_steps=100))
    first = train_sft(policy, train, engine=engine, max_steps=3)
    second = train_sft(policy, train, engine=engine, max_steps=5)
    assert first.engine is engine and second.engine is engine
    assert [r["step"] for r in second.history] == [4, 5]


def test_sft_bad_input_names_the_argument(data):
    tokenizer, train, _ = data
    policy = _policy(tokenizer)
    pair = Preference("p", "a", "b", domain="toy")
    with pytest.raises(TypeError, match=r"completions\[1\]"):
        train_sft(policy, [train[0], pair])
    with pytest.raises(ValueError, match="completions is empty"):
        train_sft(policy, [])
    with pytest.raises(ValueError, match=r"SFTConfig\.normalize"):
        SFTConfig(normalize="mean")
    with pytest.raises(TypeError, match="policy must be"):
        train_sft(object(), train)  # type: ignore[arg-type]
    other = _policy(tokenizer)
    engine = build_engine(other, EngineConfig())
    with pytest.raises(ValueError, match="engine trains"):
        train_sft(policy, train, engine=engine)
