"""Checkpoints and resume of the OODPL meta-trainer (:func:`train_meta`, [OODPL] Alg. 1).

An uninterrupted run of ``STEPS`` outer steps against a run stopped after step ``STOP`` (its
last checkpoint is at ``SAVED``) and resumed from its checkpoint root with a freshly built reward
model: the reward model's parameters are equal bit for bit (CPU), and so are the held-out
evaluations and the per-step losses. Three domains, two sampled per step, and streams shorter
than the run (they restart with a new shuffle), so both the sampler's replay and the streams'
advance decide what the resumed steps see. Also: a config or data mismatch names the field, a
missing/corrupt checkpoint file names the file, and a failing write keeps the earlier state.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from oodpl.core.records import Completion, Preference
from oodpl.models.engine.state import EngineStateError
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers import meta_checkpoint
from oodpl.models.trainers.meta import MetaDomain, MetaTrainConfig, train_meta
from oodpl.models.trainers.meta_checkpoint import (
    META_STATE_FILE,
    PHI_FILE,
    meta_checkpoint_step,
    save_meta_checkpoint,
)

STEPS, EVERY, STOP, SAVED = 5, 2, 3, 2
GOOD, BAD = ["great", "lovely", "superb"], ["awful", "boring", "noisy"]
ITEMS = {"d1": ["book", "film"], "d2": ["kettle", "lamp"], "d3": ["shirt", "shoe"]}
CONFIG = MetaTrainConfig(
    steps=STEPS,
    inner_steps=2,
    inner_lr=0.05,
    beta=0.5,
    support_batch_size=4,
    query_batch_size=4,
    outer_optimizer="adam",
    outer_lr=0.02,
    domains_per_step=2,
    eval_every=2,
)


def _domain(items: list[str], name: str) -> MetaDomain:
    completions = [
        Completion(f"review of the {i}:", f" the {i} was {w}", name) for i in items for w in GOOD
    ]
    pairs = [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", name)
        for i in items
        for g in GOOD
        for b in BAD
    ][::2]
    return MetaDomain(completions, pairs)  # 6 completions, 9 pairs: streams restart often


DOMAINS = {name: _domain(items, name) for name, items in ITEMS.items()}
HELD_OUT = {name: domain.preferences[:3] for name, domain in DOMAINS.items()}


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t for d in DOMAINS.values() for c in d.fine_tuning for t in (c.prompt, c.response)]
    return train_bpe_tokenizer(texts, vocab_size=300, model_max_length=32)


def models(tokenizer):
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=2))
    reward_model = RewardModel.from_preset("pythia-tiny", tokenizer, seed=1, lora=LoraSpec(r=2))
    return policy, reward_model


def params(reward_model: RewardModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in reward_model.trainable_parameters().items()}


@pytest.fixture(scope="module")
def uninterrupted(tokenizer, one_quiet_thread):
    with one_quiet_thread():
        policy, reward_model = models(tokenizer)
        result = train_meta(reward_model, policy, DOMAINS, CONFIG, held_out=HELD_OUT)
    return result, params(reward_model)


@pytest.fixture(scope="module")
def interrupted(tokenizer, one_quiet_thread, tmp_path_factory):
    """A run stopped by its callback after step STOP, checkpoints every EVERY steps."""
    root = tmp_path_factory.mktemp("meta") / "checkpoints"
    with one_quiet_thread():
        policy, reward_model = models(tokenizer)
        result = train_meta(
            reward_model,
            policy,
            DOMAINS,
            CONFIG,
            held_out=HELD_OUT,
            checkpoint_dir=root,
            checkpoint_every=EVERY,
            callback=lambda entry: entry["step"] == STOP,
        )
    assert [entry["step"] for entry in result.history] == list(range(1, STOP + 1))
    return root


def test_interrupted_and_resumed_run_equals_the_uninterrupted_run(
    tokenizer, uninterrupted, interrupted, tmp_path
):
    full, expected = uninterrupted
    assert (interrupted / "latest").read_text().strip() == f"step-{SAVED:08d}"
    assert meta_checkpoint_step(interrupted) == SAVED
    policy, reward_model = models(tokenizer)  # fresh: φ comes from the checkpoint
    fresh = params(reward_model)
    log = tmp_path / "resumed.jsonl"
    root = tmp_path / "more"
    resumed = train_meta(
        reward_model,
        policy,
        DOMAINS,
        CONFIG,
        held_out=HELD_OUT,
        log_path=log,
        checkpoint_dir=root,
        checkpoint_every=EVERY,
        keep_last=1,
        resume_from=interrupted,
    )
    got = params(reward_model)
    assert got.keys() == expected.keys()
    assert any(not torch.equal(got[k], fresh[k]) for k in got)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # the true step indices, the same domains and losses as steps SAVED+1.. of the full run
    assert [e["step"] for e in resumed.history] == list(range(SAVED + 1, STEPS + 1))
    assert resumed.history == full.history[SAVED:]
    assert full.series("outer_loss") != [full.history[0]["outer_loss"]] * STEPS
    assert len({tuple(e["domains"]) for e in full.history}) > 1  # the sampler matters
    # held-out evaluations: steps 0 and 2 from the checkpoint, 4 and 5 computed now
    assert resumed.held_out == full.held_out
    assert [e["step"] for e in full.held_out] == [0, 2, 4, 5]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in logged if not r.get("held_out")] == [3, 4, 5]
    assert [r["step"] for r in logged if r.get("held_out")] == [4, 5]
    # checkpoints of the resumed run: 4 and 5, keep_last=1 leaves the last
    assert resumed.last_checkpoint == root / f"step-{STEPS:08d}"
    assert sorted(p.name for p in root.iterdir()) == ["latest", f"step-{STEPS:08d}"]
    assert meta_checkpoint_step(root) == STEPS


def test_resuming_a_finished_run_changes_nothing(tokenizer, interrupted, tmp_path):
    state = interrupted / f"step-{SAVED:08d}"
    policy, reward_model = models(tokenizer)
    config = replace(CONFIG, steps=SAVED)
    result = train_meta(reward_model, policy, DOMAINS, config, resume_from=state)
    assert result.history == [] and result.held_out == []
    saved = meta_checkpoint.read_tensors(state / PHI_FILE)
    for key, value in reward_model.trainable_parameters().items():
        assert torch.equal(value.detach(), saved[key]), key
    with pytest.raises(ValueError, match=r"at outer step 2, past the run's steps=1"):
        config = replace(CONFIG, steps=1)
        train_meta(reward_model, policy, DOMAINS, config, resume_from=state)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"inner_lr": 0.1}, r"cannot resume, inner_lr was 0\.05 and is now 0\.1"),
        ({"seed": 3}, r"cannot resume, seed was 0 and is now 3"),
        ({"outer_optimizer": "sgd"}, r"outer_optimizer was 'adam' and is now 'sgd'"),
        ({"method": "first_order"}, r"method was 'unrolled' and is now 'first_order'"),
        ({"reward_parameters": "value_head"}, r"cannot resume, reward_parameters was 'all'"),
        ({"domains": "fewer"}, r"domains\[2\] \(name, fine-tuning records, preferences\) was "),
    ],
)
def test_a_mismatched_run_names_the_field(tokenizer, interrupted, change, match):
    policy, reward_model = models(tokenizer)
    domains = dict(DOMAINS)
    if change.pop("domains", None):
        domains["d3"] = MetaDomain(DOMAINS["d3"].fine_tuning[:-1], DOMAINS["d3"].preferences)
    config = replace(CONFIG, **change)
    before = params(reward_model)
    with pytest.raises(ValueError, match=match) as info:
        train_meta(reward_model, policy, domains, config, resume_from=interrupted)
    assert META_STATE_FILE in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in params(reward_model).items())


def _copy_state(interrupted: Path, tmp_path: Path) -> Path:

    state = tmp_path / "state"
    shutil.copytree(interrupted / f"step-{SAVED:08d}", state)
    return state


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: (s / PHI_FILE).unlink(), r"training state file is missing: .*phi\.safetensors"),
        (lambda s: (s / PHI_FILE).write_bytes(b"\x00garbage"), r"phi\.safetensors: not a read"),
        (
            lambda s: (s / "optimizer.safetensors").write_bytes(b"junk"),
            r"optimizer\.safetensors: not a readable safetensors file",
        ),
        (lambda s: (s / "optimizer.json").unlink(), r"missing: .*optimizer\.json"),
        (lambda s: (s / META_STATE_FILE).write_text("{"), r"meta_state\.json: invalid JSON"),
        (
            lambda s: (s / META_STATE_FILE).write_text('{"format": "other"}'),
            r"meta_state\.json: not an oodpl meta-training state",
        ),
    ],
)
def test_a_missing_or_corrupt_checkpoint_file_is_named(
    tokenizer, interrupted, tmp_path, damage, match
):
    state = _copy_state(interrupted, tmp_path)
    damage(state)
    policy, reward_model = models(tokenizer)
    with pytest.raises(EngineStateError, match=match):
        train_meta(reward_model, policy, DOMAINS, CONFIG, resume_from=state)


def test_resume_from_something_that_is_no_checkpoint(tokenizer, tmp_path):
    policy, reward_model = models(tokenizer)
    with pytest.raises(EngineStateError, match="is neither a meta-training checkpoint"):
        train_meta(reward_model, policy, DOMAINS, CONFIG, resume_from=tmp_path)
    (tmp_path / "latest").write_text("step-00000009\n")
    with pytest.raises(EngineStateError, match=r"latest points to .*step-00000009"):
        train_meta(reward_model, policy, DOMAINS, CONFIG, resume_from=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        train_meta(reward_model, policy, DOMAINS, CONFIG, checkpoint_every=-1)
    with pytest.raises(ValueError, match="keep_last must be"):
        train_meta(reward_model, policy, DOMAINS, CONFIG, keep_last=0)


def test_a_failing_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    phi = {"w": torch.nn.Parameter(torch.arange(3.0))}
    optimizer = torch.optim.Adam(list(phi.values()), lr=0.1)
    phi["w"].grad = torch.ones(3)
    optimizer.step()
    written = phi["w"].detach().clone()
    fingerprint = {"method": "unrolled", "phi": [["w", [3], "float32"]]}
    root = tmp_path / "checkpoints"
    save_meta_checkpoint(root, step=2, phi=phi, optimizer=optimizer, fingerprint=fingerprint)

    def broken(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(meta_checkpoint, "write_json", broken)
    with torch.no_grad():
        phi["w"].add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_meta_checkpoint(
            root, step=4, phi=phi, optimizer=optimizer, fingerprint=fingerprint, keep_last=1
        )
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]
    monkeypatch.undo()
    saved = meta_checkpoint.load_meta_checkpoint(root, fingerprint)
    assert saved.step == 2 and torch.equal(saved.phi["w"], written)
    assert saved.optimizer_state["state"][0]["exp_avg"].shape == (3,)
