"""Checkpoints and resume of the RJS trainer (:func:`train_rjs`, METHODS §5).

An uninterrupted run of ``ROUNDS`` rounds (``STEPS`` optimizer steps each, two epochs of the
selected set per round, so the data position inside a round matters) against:

- a run that crashes in the middle of round 1 (after step 7; its last state, step 6, was
  written every ``EVERY`` steps), resumed with a freshly built policy: it must fine-tune on the
  saved best-of-n set (re-sampling from the half-trained weights would select other responses);
- a run of fewer rounds (its last state is at a round boundary), resumed with more rounds;

both end with the uninterrupted run's weights bit for bit (CPU) and the same round statistics.
Also: a changed setting names the field, a missing/corrupt state file names the file.
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
from oodpl.models.trainers import _policy_common
from oodpl.models.trainers._policy_common import GenerationOptions
from oodpl.models.trainers.rjs import RJSConfig, train_rjs
from oodpl.models.trainers.sft import train_sft

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
ITEMS = ["book", "film", "novel", "album", "kettle", "lamp", "chair", "phone"]
PROMPTS = [f"review of the {item}:" for item in ITEMS]
ROUNDS, STEPS, EVERY, CRASH = 3, 4, 3, 7
CONFIG = RJSConfig(
    iterations=ROUNDS,
    n_samples=3,
    steps_per_iteration=STEPS,
    generation=GenerationOptions(max_new_tokens=6, temperature=1.0),
)


def engine_config() -> EngineConfig:
    # 8 prompts, batches of 4: 2 global batches per epoch, 2 epochs per round
    return EngineConfig(lr=1e-2, micro_batch_size=4, max_steps=1000, seed=0)


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def setup(one_quiet_thread, train_fixed_reward_model):
    completions = [
        Completion(f"review of the {i}:", f" the {i} was {w}", "toy") for i in ITEMS for w in GOOD
    ]
    completions += [
        Completion(f"review of the {i}:", f" the {i} was {w}", "toy") for i in ITEMS for w in BAD
    ]
    pairs = [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", "toy")
        for i in ITEMS
        for g in GOOD
        for b in BAD
    ]
    texts = [t for c in completions for t in (c.prompt, c.response)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)
    with one_quiet_thread():
        reward_model = train_fixed_reward_model(tokenizer, pairs)
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
        train_sft(
            policy, completions, engine=EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=10)
        )
    return reward_model, policy


def weights(policy: Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.fixture(scope="module")
def uninterrupted(setup, one_quiet_thread):
    reward_model, base = setup
    policy = copy.deepcopy(base)
    with one_quiet_thread():
        result = train_rjs(policy, reward_model, PROMPTS, CONFIG, engine=engine_config())
    assert [e["trained"] for e in result.iterations] == [True] * ROUNDS + [False]
    assert [r["step"] for r in result.history] == list(range(1, ROUNDS * STEPS + 1))
    return result, weights(policy)


@pytest.fixture(scope="module")
def crashed(setup, one_quiet_thread, tmp_path_factory):
    """A run killed while logging step CRASH (round 1); states every EVERY steps."""
    reward_model, base = setup
    root = tmp_path_factory.mktemp("rjs") / "checkpoints"
    log = root.parent / "crashed.jsonl"

    class CrashingLogger(_policy_common.JsonlLogger):
        def __call__(self, record):
            super().__call__(record)
            if record["step"] == CRASH:
                raise Crash(f"simulated crash after step {CRASH}")

    patch = pytest.MonkeyPatch()
    patch.setattr(_policy_common, "JsonlLogger", CrashingLogger)
    try:
        with one_quiet_thread(), pytest.raises(Crash):
            train_rjs(
                copy.deepcopy(base),
                reward_model,
                PROMPTS,
                CONFIG,
                engine=engine_config(),
                log_path=log,
                checkpoint_dir=root,
                checkpoint_every=EVERY,
            )
    finally:
        patch.undo()
    # states at 3, 4 (end of round 0) and 6 (inside round 1, steps 5..8)
    assert sorted(p.name for p in root.iterdir()) == [
        "latest",
        "step-00000003",
        "step-00000004",
        "step-00000006",
    ]
    assert (root / "latest").read_text().strip() == "step-00000006"
    return root


def test_a_run_crashed_mid_round_resumes_to_the_uninterrupted_weights(
    setup, uninterrupted, crashed, tmp_path, one_quiet_thread
):
    reward_model, base = setup
    full, expected = uninterrupted
    policy = copy.deepcopy(base)
    more = tmp_path / "more"
    log = tmp_path / "resumed.jsonl"
    with one_quiet_thread():
        resumed = train_rjs(
            policy,
            reward_model,
            PROMPTS,
            CONFIG,
            engine=engine_config(),
            log_path=log,
            checkpoint_dir=more,
            checkpoint_every=EVERY,
            keep_last=1,
            resume_from=crashed,
        )
    assert_same_weights(weights(policy), expected)
    assert any(not torch.equal(v, weights(base)[k]) for k, v in expected.items())
    # round statistics: rounds 0 and 1 from the checkpoint, 2 and the final one computed now
    assert resumed.iterations == full.iterations
    assert resumed.history == full.history[6:]
    assert [r["iteration"] for r in resumed.history] == [1, 1] + [2] * STEPS
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iteration"] for r in logged if r.get("rjs_round")] == [2, 3]  # 0, 1 not again
    assert [r["step"] for r in logged if not r.get("rjs_round")] == list(range(7, 13))
    assert resumed.last_checkpoint == more / "step-00000012"
    assert sorted(p.name for p in more.iterdir()) == ["latest", "step-00000012"]


@pytest.mark.parametrize("state", ["step-00000003", "step-00000004"])
def test_resuming_any_saved_state_gives_the_same_weights(
    setup, uninterrupted, crashed, state, one_quiet_thread
):
    """Inside round 0 (step 3: the first batch of its second epoch) and at its end (step 4)."""
    reward_model, base = setup
    full, expected = uninterrupted
    policy = copy.deepcopy(base)
    with one_quiet_thread():
        resumed = train_rjs(
            policy,
            reward_model,
            PROMPTS,
            CONFIG,
            engine=engine_config(),
            resume_from=crashed / state,
        )
    assert_same_weights(weights(policy), expected)
    assert resumed.iterations == full.iterations
    step = int(state.removeprefix("step-"))
    assert resumed.history == full.history[step:]


def test_a_shorter_run_extended_at_a_round_boundary(
    setup, uninterrupted, tmp_path, one_quiet_thread
):
    reward_model, base = setup
    full, expected = uninterrupted
    root = tmp_path / "checkpoints"
    with one_quiet_thread():
        short = train_rjs(
            copy.deepcopy(base),
            reward_model,
            PROMPTS,
            replace(CONFIG, iterations=2),
            engine=engine_config(),
            checkpoint_dir=root,
        )
        assert short.last_checkpoint == root / "step-00000008"
        assert short.iterations[:2] == full.iterations[:2]
        policy = copy.deepcopy(base)
        resumed = train_rjs(
            policy, reward_model, PROMPTS, CONFIG, engine=engine_config(), resume_from=root
        )
    assert_same_weights(weights(policy), expected)
    assert resumed.iterations == full.iterations
    assert resumed.history == full.history[8:]
    with pytest.raises(ValueError, match=r"in round 1, past the run's iterations=1"):
        train_rjs(
            copy.deepcopy(base),
            reward_model,
            PROMPTS,
            replace(CONFIG, iterations=1),
            engine=engine_config(),
            resume_from=root,
        )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_samples": 4}, r"cannot resume, n_samples was 3 and is now 4"),
        ({"steps_per_iteration": 5}, r"steps_per_iteration was 4 and is now 5"),
        ({"seed": 1}, r"cannot resume, seed was 0 and is now 1"),
        ({"normalize": "sequence"}, r"normalize was 'token' and is now 'sequence'"),
        ({"max_length": 32}, r"max_length was None and is now 32"),
        (
            {"generation": GenerationOptions(max_new_tokens=6, temperature=0.5)},
            r"cannot resume, generation was \{.*'temperature': 1\.0",
        ),
        ({"prompts": PROMPTS[:-1]}, r"cannot resume, n_prompts was 8 and is now 7"),
        ({"prompts": PROMPTS[::-1]}, r"cannot resume, prompts_sha256 was '[0-9a-f]{64}'"),
    ],
)
def test_a_changed_setting_names_the_field(setup, crashed, change, match):
    reward_model, base = setup
    prompts = change.pop("prompts", PROMPTS)
    policy = copy.deepcopy(base)
    before = weights(policy)
    with pytest.raises(ValueError, match=match) as info:
        train_rjs(
            policy,
            reward_model,
            prompts,
            replace(CONFIG, **change),
            engine=engine_config(),
            resume_from=crashed,
        )
    assert "step-00000006/extra.json" in str(info.value)
    assert_same_weights(weights(policy), before)


def _selected_gone(state: Path) -> None:
    extra = json.loads((state / "extra.json").read_text())
    del extra["trainer_state"]["data"]["selected"]
    (state / "extra.json").write_text(json.dumps(extra))


def _no_trainer_state(state: Path) -> None:
    extra = json.loads((state / "extra.json").read_text())
    del extra["trainer_state"]
    (state / "extra.json").write_text(json.dumps(extra))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: (s / "extra.json").unlink(), r"training state file is missing: .*extra\.json"),
        (lambda s: (s / "extra.json").write_text("{"), r"extra\.json: invalid JSON"),
        (_no_trainer_state, r"extra\.json: holds no trainer_state"),
        (_selected_gone, r"extra\.json: the field 'data\.selected' must be a non-empty list"),
        (lambda s: (s / "model.safetensors").unlink(), r"missing: .*model\.safetensors"),
        (lambda s: (s / "optimizer.json").unlink(), r"missing: .*optimizer\.json"),
        (lambda s: (s / "scheduler.json").write_text("["), r"scheduler\.json: invalid JSON"),
    ],
)
def test_a_missing_or_corrupt_state_file_is_named(setup, crashed, tmp_path, damage, match):
    reward_model, base = setup
    state = tmp_path / "state"
    shutil.copytree(crashed / "step-00000006", state)
    damage(state)
    with pytest.raises(EngineStateError, match=match):
        train_rjs(
            copy.deepcopy(base),
            reward_model,
            PROMPTS,
            CONFIG,
            engine=engine_config(),
            resume_from=state,
        )


def test_resume_from_something_that_is_no_checkpoint(setup, tmp_path):
    reward_model, base = setup
    with pytest.raises(EngineStateError, match="is neither a training state nor a root"):
        train_rjs(copy.deepcopy(base), reward_model, PROMPTS, CONFIG, resume_from=tmp_path)
