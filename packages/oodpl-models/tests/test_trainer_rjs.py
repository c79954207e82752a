"""RJS trainer: the mean reward of samples rises; best-of-n selection by brute force; bad input."""

from __future__ import annotations

import json

import pytest

from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import GenerationOptions
from oodpl.models.trainers.rjs import RJSConfig, best_of_n, train_rjs
from oodpl.models.trainers.sft import train_sft

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
ITEMS = ["book", "film", "novel", "album", "kettle", "lamp", "chair", "phone"]


def _completions(words):
    return [
        Completion(f"review of the {i}:", f" the {i} was {w}", "toy") for i in ITEMS for w in words
    ]


def _preferences():
    return [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", "toy")
        for i in ITEMS
        for g in GOOD
        for b in BAD
    ]


@pytest.fixture(scope="module")
def setup(one_quiet_thread, train_fixed_reward_model):
    texts = [t for c in _completions(GOOD + BAD) for t in (c.prompt, c.response)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)
    with one_quiet_thread():
        reward_model = train_fixed_reward_model(tokenizer, _preferences())
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
        # mostly negative reviews: best-of-4 has room to pick the positive ones
        data = _completions(GOOD[:1] + BAD)
        train_sft(policy, data, engine=EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=40))
    return tokenizer, reward_model, policy


def test_rjs_raises_the_mean_reward_of_samples(setup, tmp_path):
    _, reward_model, policy = setup
    prompts = [f"review of the {item}:" for item in ITEMS]
    config = RJSConfig(
        iterations=2,
        n_samples=4,
        steps_per_iteration=10,
        generation=GenerationOptions(max_new_tokens=8, temperature=1.0),
    )
    log = tmp_path / "rjs.jsonl"
    result = train_rjs(
        policy,
        reward_model,
        prompts,
        config,
        engine=EngineConfig(lr=1e-2, micro_batch_size=4, max_steps=1000, seed=0),
        log_path=log,
    )
    rewards = [entry["mean_reward"] for entry in result.iterations]
    print("RJS mean sample reward per round:", rewards)
    assert [entry["trained"] for entry in result.iterations] == [True, True, False]
    assert rewards[-1] > rewards[0] + 0.5
    assert all(e["best_reward"] >= e["mean_reward"] for e in result.iterations)
    assert [r["step"] for r in result.history] == list(range(1, 21))
    assert [r["iteration"] for r in result.history] == [0] * 10 + [1] * 10
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert sum(1 for x in lines if x.get("rjs_round")) == 3 and len(lines) == 23


def test_best_of_n_against_brute_force():
    prompts = ["a", "b", "c"]
    samples = [["x", "yyy", ""], ["", ""], ["zz", "w"]]

    def reward_fn(ps, ys):
        return [len(y) + 0.5 * (p == "c") for p, y in zip(ps, ys, strict=True)]

    selected, stats = best_of_n(prompts, samples, reward_fn)
    assert selected == [{"prompt": "a", "response": "yyy"}, {"prompt": "c", "response": "zz"}]
    scores = [1, 3, 2.5, 1.5]
    assert stats["mean_reward"] == pytest.approx(sum(scores) / 4)
    assert stats["best_reward"] == pytest.approx((3 + 2.5) / 2)
    assert stats["n_empty"] == 3 and stats["n_selected"] == 2
    with pytest.raises(ValueError, match="every sampled response is empty"):
        best_of_n(["a"], [["", ""]], reward_fn)


def test_rjs_bad_input(setup):
    _, reward_model, policy = setup
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        train_rjs(policy, reward_model, ["ok", ""])
    with pytest.raises(ValueError, match=r"RJSConfig\.n_samples"):
        RJSConfig(n_samples=0)
    with pytest.raises(ValueError, match=r"GenerationOptions\.top_p"):
        GenerationOptions(top_p=1.5)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train_rjs(
            policy,
            reward_model,
            ["review of the book:"],
            RJSConfig(generation=GenerationOptions(max_new_tokens=4)),
            engine=EngineConfig(micro_batch_size=4),
        )
    with pytest.raises(ValueError, match="zero_stage <= 2"):
        train_rjs(
            policy,
            reward_model,
            ["review of the book:"],
            engine=EngineConfig(backend="deepspeed", zero_stage=3),
        )
