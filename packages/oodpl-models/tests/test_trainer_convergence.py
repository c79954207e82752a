"""Acceptance: RM and DPO trainers fit a small fixed preference set on every tiny preset, and the
saved model reloads with identical scores.

For each of ``pythia-tiny``, ``gemma-tiny`` and ``t5-tiny`` (full fine-tuning, seeded, torch
engine, CPU, fp32) training accuracy goes from roughly chance (≤ 0.8) to ≥ 0.95 on 16 fixed pairs,
and ``save_pretrained`` -> ``load`` reproduces rewards (RM) / summed sequence log-probs (DPO) to
a max abs diff ≤ 1e-6.

Accuracy definitions:

* RM: :func:`oodpl.core.metrics.preference_accuracy` of the explicit rewards ``r(x, y)``.
* DPO "after": :func:`oodpl.core.metrics.dporm_accuracy`, i.e. ``mean 1[r_dpo(y_w) > r_dpo(y_l)]``
  with ``r_dpo = β(logπ_θ − logπ_ref)`` (METHODS §2) against the reference the trainer used (the
  initial policy).
* DPO "before": against its own reference every implicit reward is exactly 0, so DPORM accuracy
  is 0 with all pairs tied (asserted below) -- a degenerate number, not a measure of chance. We
  therefore measure "before" as :func:`preference_accuracy` of the initial policy's summed
  log-prob margin ``logπ(y_w) − logπ(y_l)``: after one infinitesimal step along the DPO gradient
  the implicit-reward ranking is this margin's ranking plus the update, so this is the accuracy
  the implicit reward starts from, and it is not trivially 100 %.
* DPO extra (stricter than the acceptance point): DPORM accuracy saturates after very little
  training (one small step already ranks all 16 pairs here, even at lr 3e-5), so we also require
  the trained policy's own margin ``logπ(y_w) − logπ(y_l)`` to reach ≥ 0.95.

Pairs differ only in the sentiment word (same template, same number of words), so the initial
scores carry no length signal and chance is ~50 %.
"""

from __future__ import annotations

import pytest
import torch

from oodpl.core.metrics import dporm_accuracy, preference_accuracy
from oodpl.core.records import Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers.dpo import DPOConfig, train_dpo
from oodpl.models.trainers.reward import train_reward_model

PRESETS = ("pythia-tiny", "gemma-tiny", "t5-tiny")
ITEMS = ["book", "film", "kettle", "album", "lamp", "novel", "toaster", "chair"]
GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "dreadful"]
RELOAD_ATOL = 1e-6
DPO_BETA = 0.1

# Full fine-tuning, one micro batch = all 16 pairs, constant lr, ~0.5-1.5 s per case on one
# thread. Chosen so that a single step does NOT pass (checked when tuning: after 1 step the RM
# accuracy and the DPO policy-margin accuracy stay below 0.95 on every preset; the lower DPO lr
# 3e-4 x 30 steps is not enough for pythia/gemma), i.e. the asserts need actual training.
SCHEDULE = {"rm": (3e-5, 40), "dpo": (1e-3, 30)}  # (lr, max_steps)


def _pairs() -> list[Preference]:
    """16 fixed pairs; chosen and rejected share the template and differ in one sentiment word."""
    pairs = []
    for i in range(16):
        item = ITEMS[i % 8]
        good, bad = GOOD[i % 4], BAD[(i // 4 + i) % 4]
        prompt = f"what did you think of the {item}?"
        pairs.append(Preference(prompt, f" the {item} was {good}", f" the {item} was {bad}", "toy"))
    return pairs


@pytest.fixture(scope="module")
def data():
    pairs = _pairs()
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    return train_bpe_tokenizer(texts, vocab_size=300, model_max_length=32), pairs


def _engine(method: str) -> EngineConfig:
    lr, steps = SCHEDULE[method]
    return EngineConfig(backend="torch", lr=lr, max_steps=steps, micro_batch_size=16, seed=0)


@torch.no_grad()
def _rewards(rm: RewardModel, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    rm.eval()
    return rm.preference_rewards(rm.preference_collator()(pairs))


@torch.no_grad()
def _logps(policy: Policy, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    policy.eval()
    chosen, _, rejected, _ = policy.preference_logps(policy.preference_collator()(pairs))
    return chosen, rejected


def _max_abs_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("preset", PRESETS)
def test_reward_model_fits_and_reloads(data, preset, tmp_path) -> None:
    tokenizer, pairs = data
    rm = RewardModel.from_preset(preset, tokenizer, seed=0)
    before = preference_accuracy(*_rewards(rm, pairs))
    assert before.accuracy <= 0.8, before

    train_reward_model(rm, pairs, engine=_engine("rm"))
    trained = _rewards(rm, pairs)
    after = preference_accuracy(*trained)
    assert after.accuracy >= 0.95, (before, after)

    rm.save_pretrained(tmp_path / "rm")
    reloaded = _rewards(RewardModel.load(tmp_path / "rm"), pairs)
    diff = _max_abs_diff(trained, reloaded)
    print(f"{preset} rm: before {before.accuracy:.3f} after {after.accuracy:.3f} diff {diff:.2e}")
    assert diff <= RELOAD_ATOL


@pytest.mark.parametrize("preset", PRESETS)
def test_dpo_fits_and_reloads(data, preset, tmp_path) -> None:
    tokenizer, pairs = data
    policy = Policy.from_preset(preset, tokenizer, seed=0)
    reference = _logps(policy, pairs)  # the trainer's default reference: the initial policy
    degenerate = dporm_accuracy(*reference, *reference, beta=DPO_BETA)
    assert degenerate.n_ties == len(pairs)  # why "before" is the log-prob margin (docstring)
    before = preference_accuracy(*reference)
    assert before.accuracy <= 0.8, before

    train_dpo(policy, pairs, DPOConfig(beta=DPO_BETA), engine=_engine("dpo"))
    trained = _logps(policy, pairs)
    after = dporm_accuracy(*trained, *reference, beta=DPO_BETA)
    assert after.accuracy >= 0.95, (before, after)
    # Stricter: DPORM accuracy relative to the reference saturates after very little training
    # (one small step already ranks all 16 pairs here), so also require the policy itself to
    # rank y_w above y_l, which needs the initial ~chance margin to be overturned.
    margin_after = preference_accuracy(*trained)
    assert margin_after.accuracy >= 0.95, (before, margin_after)

    policy.save_pretrained(tmp_path / "policy")
    reloaded = _logps(Policy.load(tmp_path / "policy"), pairs)
    diff = _max_abs_diff(trained, reloaded)
    print(
        f"{preset} dpo: before {before.accuracy:.3f} after {after.accuracy:.3f} "
        f"margin after {margin_after.accuracy:.3f} diff {diff:.2e}"
    )
    assert diff <= RELOAD_ATOL
