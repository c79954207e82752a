"""SFT trainer: held-out NLL drops on tiny presets, the loss is the core SFT loss, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oodpl.core.losses import sft_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig, build_engine
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import completion_nll
from oodpl.models.trainers.hpl import train_hpl
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
    print(f"{preset}: held-out NLL {before:.3f} -> {after:.3f}")
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


DEEPSPEED_WORKER = r'''
"""Run every policy trainer of oodpl on the DeepSpeed engine (ZeRO-2, one CPU process)."""
import json
import sys

import torch

from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import GenerationOptions
from oodpl.models.trainers.hpl import train_hpl
from oodpl.models.trainers.meta_test import MetaTestConfig, train_meta_test
from oodpl.models.trainers.ppo import PPOConfig, train_ppo
from oodpl.models.trainers.rjs import RJSConfig, train_rjs
from oodpl.models.trainers.sft import train_sft

torch.set_num_threads(1)
spec = json.loads(sys.argv[1])
train = [Completion(**c) for c in spec["train"]]
pairs = [Preference(**p) for p in spec["pairs"]]
tokenizer = train_bpe_tokenizer(spec["texts"], vocab_size=300, model_max_length=64)
base = dict(backend="deepspeed", zero_stage=2, micro_batch_size=8, seed=3, max_grad_norm=None)
config = EngineConfig(lr=1e-2, max_steps=6, **base)


def policy():
    return Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))


def reward_fn(prompts, responses):
    return [float("great" in r) - float("awful" in r) for r in responses]


out = {}
out["sft"] = [r["loss"] for r in train_sft(policy(), train, engine=config).history]
out["hpl"] = [r["loss"] for r in train_hpl(policy(), pairs, engine=config).history]
meta = train_meta_test(policy(), reward_fn, train, MetaTestConfig(eval_every=2), engine=config)
out["meta_test"] = {
    "losses": [s["selection_loss"] for s in meta.selection],
    "best_step": meta.best_step,
    "global_step": meta.engine.global_step,
}
prompts = sorted({c.prompt for c in train})
generation = GenerationOptions(max_new_tokens=4)
rjs = train_rjs(
    policy(), reward_fn, prompts,
    RJSConfig(n_samples=2, steps_per_iteration=2, generation=generation, evaluate_final=False),
    engine=EngineConfig(lr=1e-2, max_steps=100, **{**base, "micro_batch_size": 2}),
)
out["rjs_steps"] = [r["step"] for r in rjs.history]
ppo = train_ppo(
    policy(), reward_fn, prompts,
    PPOConfig(iterations=2, rollout_size=4, ppo_epochs=1, generation=generation),
    engine=EngineConfig(lr=1e-3, max_steps=100, **{**base, "micro_batch_size": 2}),
)
out["ppo_steps"] = [r["step"] for r in ppo.history]
print(json.dumps(out))
'''


@pytest.mark.deepspeed
def test_policy_trainers_run_on_the_deepspeed_engine(data, tmp_path):
    """SFT and HPL on DeepSpeed ZeRO-2 reproduce the torch engine's loss curves; meta-test (with
    checkpoint selection), RJS and PPO run on it (one CPU process, in a subprocess)."""
    _, train, _ = data
    pairs = [Preference(c.prompt, c.response, c.response + " indeed", "toy") for c in train[:16]]
    spec = {
        "train": [c.to_dict() for c in train],
        "pairs": [p.to_dict() for p in pairs],
        "texts": [c.prompt + c.response for c in train],
    }
    script = tmp_path / "worker.py"
    script.write_text(DEEPSPEED_WORKER)
    src = [str(Path(__file__).parents[2] / p / "src") for p in ("oodpl-core", "oodpl-models")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        PYTHONPATH=os.pathsep.join(src), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the same runs on the torch engine, in this process
    texts = spec["texts"]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)
    config = EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=6, seed=3, max_grad_norm=None)
    sft = train_sft(_policy(tokenizer), train, engine=config)
    hpl = train_hpl(_policy(tokenizer), pairs, engine=config)
    assert out["sft"] == pytest.approx(sft.series("loss"), abs=1e-5)
    assert out["hpl"] == pytest.approx(hpl.series("loss"), abs=1e-5)
    meta = out["meta_test"]
    assert meta["best_step"] == meta["global_step"]  # the engine state was restored to the best
    assert min(meta["losses"]) == meta["losses"][meta["best_step"] // 2]
    assert out["rjs_steps"] == [1, 2]
    assert len(out["ppo_steps"]) == 2 and 0 < out["ppo_steps"][0] < out["ppo_steps"][1]
