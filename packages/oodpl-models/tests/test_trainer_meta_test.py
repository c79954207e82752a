"""Meta-test trainer ([OODPL] Alg. 2): with a frozen, well-chosen reward model the RWR loss drops
and PL accuracy on the test domain rises; checkpoint selection picks the lowest training loss;
the loss is the core RWR loss; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from oodpl.core.losses import reward_weighted_regression_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import policy_preference_metrics
from oodpl.models.trainers.meta_test import MetaTestConfig, rwr_loss_fn, train_meta_test
from oodpl.models.trainers.sft import train_sft

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
TRAIN_ITEMS = ["book", "film", "novel", "album", "poem", "song"]
TEST_ITEMS = ["kettle", "lamp", "chair", "phone"]


def _completions(items, words=GOOD + BAD):
    return [
        Completion(f"review of the {i}:", f" the {i} was {w}", "toy") for i in items for w in words
    ]


def _preferences(items):
    return [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", "toy")
        for i in items
        for g in GOOD
        for b in BAD
    ]


@pytest.fixture(scope="module")
def setup(one_quiet_thread, train_fixed_reward_model):
    texts = [t for c in _completions(TRAIN_ITEMS + TEST_ITEMS) for t in (c.prompt, c.response)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)
    with one_quiet_thread():
        reward_model = train_fixed_reward_model(tokenizer, _preferences(TRAIN_ITEMS))
        test_batch = reward_model.preference_collator()(_preferences(TEST_ITEMS))
        scores = reward_model.compute_rewards([test_batch])
        assert float((scores["chosen_rewards"] > scores["rejected_rewards"]).float().mean()) > 0.9
        # the SFT policy, fine-tuned on negative reviews only: it prefers the rejected answers
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
        sft_data = _completions(TRAIN_ITEMS, BAD)
        train_sft(policy, sft_data, engine=EngineConfig(lr=1e-2, max_steps=30))
    sft_state = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    return tokenizer, reward_model, policy, sft_state


def _fresh_policy(setup):
    _, _, policy, sft_state = setup
    with torch.no_grad():
        for key, value in policy.trainable_parameters().items():
            value.copy_(sft_state[key])
    return policy


def test_meta_test_lowers_rwr_loss_and_raises_test_pl_accuracy(setup, tmp_path):
    _, reward_model, _, _ = setup
    policy = _fresh_policy(setup)
    rm_before = {k: v.detach().clone() for k, v in reward_model.state_dict().items()}
    test_pairs = _preferences(TEST_ITEMS)
    before = policy_preference_metrics(policy, test_pairs)
    config = MetaTestConfig(beta=0.25, eval_every=5, selection_size=None)
    engine = EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=20, seed=0)
    log = tmp_path / "meta_test.jsonl"
    result = train_meta_test(
        policy, reward_model, _completions(TEST_ITEMS), config, engine=engine, log_path=log
    )
    after = policy_preference_metrics(policy, test_pairs)
    # the same run with a constant reward (uniform weights: plain SFT on the test domain)
    policy = _fresh_policy(setup)
    flat = lambda prompts, responses: [0.0] * len(prompts)  # noqa: E731
    train_meta_test(policy, flat, _completions(TEST_ITEMS), config, engine=engine)
    uniform = policy_preference_metrics(policy, test_pairs)
    accuracies = [before["pl_accuracy"], uniform["pl_accuracy"], after["pl_accuracy"]]
    print("meta-test PL accuracy: SFT, constant reward, frozen RM:", accuracies)
    print("selection losses", [(s["step"], s["selection_loss"]) for s in result.selection])
    assert before["pl_accuracy"] < 0.5 and after["pl_accuracy"] >= 0.9
    assert after["pl_accuracy"] > uniform["pl_accuracy"] + 0.2
    steps = [s["step"] for s in result.selection]
    losses = [s["selection_loss"] for s in result.selection]
    assert steps == [0, 5, 10, 15, 20]
    assert result.best_loss == min(losses) < losses[0] - 1.0
    assert result.best_step == steps[losses.index(min(losses))]
    # the reward model is frozen
    for key, value in reward_model.state_dict().items():
        assert torch.equal(value, rm_before[key]), key
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert sum(1 for x in lines if x.get("selection")) == 5
    assert len([x for x in lines if not x.get("selection")]) == 20


def test_selection_restores_the_lowest_loss_checkpoint(setup):
    _, reward_model, _, _ = setup
    policy = _fresh_policy(setup)
    records = _completions(TEST_ITEMS)
    # a learning rate so large that training diverges after a few steps: the best checkpoint is
    # an early one, and the returned policy must be that one, not the last
    config = MetaTestConfig(beta=1.0, eval_every=2, selection_size=16, selection_batch_size=8)
    result = train_meta_test(
        policy,
        reward_model,
        records,
        config,
        engine=EngineConfig(lr=0.3, micro_batch_size=8, max_steps=10, seed=0, max_grad_norm=None),
    )
    losses = [s["selection_loss"] for s in result.selection]
    assert result.best_step < 10, losses
    assert result.engine.global_step == result.best_step
    # re-score the returned policy on the selection set: it is the best checkpoint
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    chosen = [records[i] for i in order[:16]]
    rewards = result.rewards[order[:16]]
    collator = policy.completion_collator()
    policy.eval()
    with torch.no_grad():
        rescored = []
        for start in (0, 8):
            logps, n_tokens = policy.sequence_logps(collator(chosen[start : start + 8]))
            rescored.append(
                float(reward_weighted_regression_loss(logps, n_tokens, rewards[start : start + 8]))
            )
    assert sum(rescored) / 2 == pytest.approx(result.best_loss, rel=1e-5)


def test_rwr_loss_fn_uses_the_frozen_rewards(setup):
    _, reward_model, _, _ = setup
    policy = _fresh_policy(setup)
    records = _completions(TEST_ITEMS)[:6]
    batch = policy.completion_collator()(records)
    rewards = reward_model.compute_rewards([reward_model.completion_collator()(records)])["rewards"]
    config = MetaTestConfig(beta=0.5)
    loss, metrics = rwr_loss_fn(config)(policy, {"batch": batch, "rewards": rewards})
    logps, n_tokens = policy.sequence_logps(batch)
    weights = 6 * torch.softmax(rewards / 0.5, dim=0)  # B·softmax(r/β), [OODPL] Eq. 10
    torch.testing.assert_close(loss, -(weights * logps / n_tokens).mean())
    assert float(metrics["max_weight"]) == pytest.approx(float(weights.max()), rel=1e-6)


def test_meta_test_bad_input(setup):
    _, reward_model, _, _ = setup
    policy = _fresh_policy(setup)
    with pytest.raises(ValueError, match=r"MetaTestConfig\.beta"):
        MetaTestConfig(beta=-1.0)
    with pytest.raises(ValueError, match=r"MetaTestConfig\.weighting"):
        MetaTestConfig(weighting="linear")
    with pytest.raises(TypeError, match=r"completions\[0\]"):
        train_meta_test(policy, reward_model, _preferences(TEST_ITEMS)[:2])
    with pytest.raises(TypeError, match="reward_model must be a RewardModel or a callable"):
        train_meta_test(policy, 3.0, _completions(TEST_ITEMS))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reward returned 1 scores for 8"):
        train_meta_test(policy, lambda p, r: [0.0], _completions(TEST_ITEMS[:1]))
