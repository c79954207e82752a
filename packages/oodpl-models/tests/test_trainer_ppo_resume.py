"""Checkpoints and resume of the PPO trainer (:func:`train_ppo`, METHODS §3).

An uninterrupted run of ``ITERATIONS`` iterations (rollouts of 6 of the 8 prompts, so the unused
prompt order carries over between iterations, and two shuffled minibatches per PPO epoch drawn
from the same generator) against a run that crashes while logging iteration ``CRASH`` (states
after every ``EVERY`` iterations) resumed with a fresh policy, and against a shorter run extended
to more iterations: both end with the uninterrupted run's weights (policy and value head) bit for
bit on CPU and the same iteration records. Also: a changed setting names the field, a damaged
state file is named, and with gradient accumulation a state is written only on a boundary.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.engine.state import EngineStateError
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers import ppo as ppo_module
from oodpl.models.trainers._policy_common import GenerationOptions
from oodpl.models.trainers.ppo import PPOConfig, train_ppo
from oodpl.models.trainers.sft import train_sft

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
ITEMS = ["book", "film", "novel", "album", "kettle", "lamp", "chair", "phone"]
PROMPTS = [f"review of the {item}:" for item in ITEMS]
ITERATIONS, EVERY, CRASH = 4, 2, 2  # CRASH: 0-based iteration being logged when it dies
CONFIG = PPOConfig(
    iterations=ITERATIONS,
    rollout_size=6,
    ppo_epochs=2,
    kl_coef=0.02,
    generation=GenerationOptions(max_new_tokens=6),
)


def engine_config(**changes) -> EngineConfig:
    return EngineConfig(**{"lr": 2e-3, "micro_batch_size": 4, "max_steps": 1000, **changes})


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def setup(one_quiet_thread, train_fixed_reward_model):
    completions = [
        Completion(f"review of the {i}:", f" the {i} was {w}", "toy")
        for i in ITEMS
        for w in GOOD + BAD
    ]
    pairs = [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", "toy")
        for i in ITEMS
        for g in GOOD
        for b in BAD
    ]
    tokenizer = train_bpe_tokenizer(
        [t for c in completions for t in (c.prompt, c.response)],
        vocab_size=300,
        model_max_length=64,
    )
    with one_quiet_thread():
        reward_model = train_fixed_reward_model(tokenizer, pairs)
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
        train_sft(
            policy, completions, engine=EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=10)
        )
    return reward_model, policy


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.actor_critic.state_dict().items()}


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    assert any(k.startswith("value_head.") for k in got)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def run(setup, config=CONFIG, engine=None, **kw):
    reward_model, base = setup
    return train_ppo(
        copy.deepcopy(base), reward_model, PROMPTS, config, engine=engine or engine_config(), **kw
    )


@pytest.fixture(scope="module")
def uninterrupted(setup, one_quiet_thread):
    with one_quiet_thread():
        result = run(setup)
    assert [r["iteration"] for r in result.history] == list(range(ITERATIONS))
    return result, weights(result)


@pytest.fixture(scope="module")
def crashed(setup, one_quiet_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo") / "checkpoints"

    class CrashingLogger(ppo_module.JsonlLogger):
        def __call__(self, record):
            super().__call__(record)
            if record["iteration"] == CRASH:
                raise Crash(f"simulated crash in iteration {CRASH}")

    patch = pytest.MonkeyPatch()
    patch.setattr(ppo_module, "JsonlLogger", CrashingLogger)
    try:
        with one_quiet_thread(), pytest.raises(Crash):
            run(
                setup,
                log_path=root.parent / "crashed.jsonl",
                checkpoint_dir=root,
                checkpoint_every=EVERY,
            )
    finally:
        patch.undo()
    # 2 epochs x 2 minibatches (6 rows, 4 a minibatch) = 4 steps an iteration: a state after 2
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000008"]
    return root


def test_a_crashed_run_resumes_to_the_uninterrupted_weights(
    setup, uninterrupted, crashed, tmp_path, one_quiet_thread
):
    full, expected = uninterrupted
    log, more = tmp_path / "resumed.jsonl", tmp_path / "more"
    with one_quiet_thread():
        resumed = run(
            setup, log_path=log, checkpoint_dir=more, checkpoint_every=1, keep_last=1,
            resume_from=crashed,
        )  # fmt: skip
    assert_same_weights(weights(resumed), expected)
    assert resumed.history == full.history
    assert [json.loads(line)["iteration"] for line in log.read_text().splitlines()] == [2, 3]
    assert resumed.last_checkpoint == more / "step-00000016"
    assert sorted(p.name for p in more.iterdir()) == ["latest", "step-00000016"]


def test_a_shorter_run_extended(setup, uninterrupted, tmp_path, one_quiet_thread):
    full, expected = uninterrupted
    root = tmp_path / "checkpoints"
    with one_quiet_thread():
        short = run(setup, replace(CONFIG, iterations=3), checkpoint_dir=root)
        assert short.last_checkpoint == root / "step-00000012"
        assert short.history == full.history[:3]
        resumed = run(setup, resume_from=root)
    assert_same_weights(weights(resumed), expected)
    assert resumed.history == full.history
    with pytest.raises(ValueError, match=r"after iteration 3, past the run's iterations=2"):
        run(setup, replace(CONFIG, iterations=2), resume_from=root)


def test_with_accumulation_a_state_is_written_on_a_boundary_only(setup, tmp_path):
    root = tmp_path / "checkpoints"
    # 4 micro-batches an iteration, grad_accum 3: boundaries after iterations 3, 6, ...
    run(setup, replace(CONFIG, iterations=3), engine_config(grad_accum=3), checkpoint_dir=root,
        checkpoint_every=1)  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000004"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rollout_size": 5}, r"cannot resume, rollout_size was 6 and is now 5"),
        ({"kl_coef": 0.1}, r"cannot resume, kl_coef was 0\.02 and is now 0\.1"),
        ({"seed": 1}, r"cannot resume, seed was 0 and is now 1"),
        ({"generation": GenerationOptions(max_new_tokens=7)}, r"cannot resume, generation was"),
        ({"engine": {"micro_batch_size": 2}}, r"micro_batch_size was 4 and is now 2"),
        ({"prompts": PROMPTS[::-1]}, r"cannot resume, prompts_sha256 was"),
    ],
)
def test_a_changed_setting_names_the_field(setup, crashed, change, match):
    reward_model, base = setup
    prompts = change.pop("prompts", PROMPTS)
    engine = engine_config(**change.pop("engine", {}))
    with pytest.raises(ValueError, match=match) as info:
        train_ppo(
            copy.deepcopy(base),
            reward_model,
            prompts,
            replace(CONFIG, **change),
            engine=engine,
            resume_from=crashed,
        )
    assert "step-00000008/extra.json" in str(info.value)


def _damage_data(field: str):
    def damage(state: Path) -> None:
        extra = json.loads((state / "extra.json").read_text())
        extra["trainer_state"]["data"][field] = "junk"
        (state / "extra.json").write_text(json.dumps(extra))

    return damage


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: (s / "extra.json").write_text("{"), r"extra\.json: invalid JSON"),
        (_damage_data("generator"), r"extra\.json: the field 'data\.generator'"),
        (_damage_data("order"), r"extra\.json: the field 'data\.order'"),
        (_damage_data("history"), r"extra\.json: the field 'data\.history'"),
        (lambda s: (s / "model.safetensors").unlink(), r"missing: .*model\.safetensors"),
        (lambda s: (s / "optimizer.json").unlink(), r"missing: .*optimizer\.json"),
    ],
)
def test_a_missing_or_corrupt_state_file_is_named(setup, crashed, tmp_path, damage, match):
    state = tmp_path / "state"
    shutil.copytree(crashed / "step-00000008", state)
    damage(state)
    with pytest.raises(EngineStateError, match=match):
        run(setup, resume_from=state)


def test_an_rjs_state_is_refused(setup, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "engine.json").write_text("{}")
    extra = {"trainer_state": {"format": "oodpl-sampling-state", "version": 1, "trainer": "rjs"}}
    (state / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(ValueError, match="written by trainer 'rjs', not 'ppo'"):
        run(setup, resume_from=state)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        run(setup, checkpoint_every=-1)
