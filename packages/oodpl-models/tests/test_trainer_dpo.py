"""DPO trainer: every loss type's first step in closed form, reference modes agree, resume."""

from __future__ import annotations

import math

import pytest
import torch

from oodpl.core.records import Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers.dpo import DPOConfig, train_dpo

ITEMS = ["book", "film", "kettle", "album"]
GOOD = ["great", "lovely"]
BAD = ["awful", "boring"]


@pytest.fixture(scope="module")
def data():
    pairs = [
        Preference(f"the {item}?", f" {item} was {g}", f" {item} was {b}", "toy")
        for item in ITEMS
        for g, b in zip(GOOD, BAD, strict=True)
    ]
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    return train_bpe_tokenizer(texts, vocab_size=300, model_max_length=32), pairs


def _policy(tokenizer) -> Policy:
    return Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))


def _engine(**kwargs) -> EngineConfig:
    return EngineConfig(**{"lr": 1e-2, "max_steps": 6, "micro_batch_size": 4, **kwargs})


@pytest.mark.parametrize(
    ("loss_type", "smoothing", "expected"),
    [
        ("sigmoid", 0.0, math.log(2)),  # policy == reference at step 1: h = 0
        ("label_smoothed", 0.2, math.log(2)),
        ("robust", 0.2, math.log(2)),
        ("ipo", 0.0, (1 / (2 * 0.5)) ** 2),  # (0 - 1/(2β))², β = 0.5
        ("hinge", 0.0, 1.0),
    ],
)
def test_first_step_loss_closed_form(data, loss_type, smoothing, expected) -> None:
    tokenizer, pairs = data
    config = DPOConfig(beta=0.5, loss_type=loss_type, label_smoothing=smoothing)
    result = train_dpo(_policy(tokenizer), pairs, config, engine=_engine(max_steps=1))
    record = result.history[0]
    assert record["loss"] == pytest.approx(expected, abs=1e-5)
    assert record["margin"] == pytest.approx(0.0, abs=1e-5)


def test_rpo_term_adds_chosen_nll(data) -> None:
    tokenizer, pairs = data
    policy = _policy(tokenizer)
    config = DPOConfig(rpo_alpha=0.7)
    first = train_dpo(policy, pairs, config, engine=_engine(max_steps=1, micro_batch_size=8))
    with torch.no_grad():  # the initial policy (= reference) on the whole first batch
        chosen, n, _, _ = _policy(tokenizer).preference_logps(policy.preference_collator()(pairs))
    nll = float((-chosen / n).mean())
    assert first.history[0]["loss"] == pytest.approx(math.log(2) + 0.7 * nll, rel=1e-5)


def test_reference_modes_agree_and_dpo_learns(data) -> None:
    tokenizer, pairs = data
    runs = {
        mode: train_dpo(_policy(tokenizer), pairs, DPOConfig(reference=mode), engine=_engine())
        for mode in ("precomputed", "model")
    }
    losses = {mode: run.series("loss") for mode, run in runs.items()}
    assert losses["model"] == pytest.approx(losses["precomputed"], abs=1e-5)
    assert losses["model"][-1] < losses["model"][0]
    assert runs["model"].history[-1]["margin"] > 0


def test_dpo_resume_reproduces_uninterrupted_training(data, tmp_path) -> None:
    """Acceptance 5 for DPO training (torch backend): bit-identical parameters at step 6."""
    tokenizer, pairs = data
    engine = _engine(warmup_steps=2, scheduler="cosine", micro_batch_size=2, grad_accum=2)
    full = _policy(tokenizer)
    full_run = train_dpo(full, pairs, engine=engine, checkpoint_dir=tmp_path, checkpoint_every=3)
    resumed = _policy(tokenizer)  # the same *initial* policy: it is also the reference
    tail = train_dpo(resumed, pairs, engine=engine, resume_from=tmp_path / "step-00000003")
    assert tail.history == full_run.history[3:]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_dpo_input(data) -> None:
    tokenizer, _ = data
    with pytest.raises(ValueError, match="DPOConfig: beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match=r"DPOConfig\.reference"):
        DPOConfig(reference="online")
    with pytest.raises(TypeError, match="preferences"):
        train_dpo(_policy(tokenizer), "not records")  # type: ignore[arg-type]
