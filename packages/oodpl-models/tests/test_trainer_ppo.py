"""PPO: closed-form pieces against hand computations (GAE loop, clipped objective, clipped value
loss, KL-shaped rewards), the value-head forward against the policy, and an end-to-end run in
which the mean reward-model score of the rollouts rises."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers._policy_common import GenerationOptions
from oodpl.models.trainers.ppo import (
    PolicyWithValueHead,
    PPOConfig,
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    kl_penalized_rewards,
    left_align,
    masked_whiten,
    response_token_mask,
    train_ppo,
)
from oodpl.models.trainers.sft import train_sft

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
ITEMS = ["book", "film", "novel", "album", "kettle", "lamp", "chair", "phone"]


# --- closed-form pieces -------------------------------------------------------------------------
def _hand_gae(rewards, values, gamma, lam):
    """Textbook GAE for one sequence (python floats)."""
    n = len(rewards)
    advantages = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def test_gae_matches_a_hand_loop_on_ragged_rows():
    lengths = [3, 1, 5]
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    values = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    advantages, returns = generalized_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    for row, n in enumerate(lengths):
        hand_a, hand_g = _hand_gae(rewards[row, :n].tolist(), values[row, :n].tolist(), 0.9, 0.8)
        assert advantages[row, :n].tolist() == pytest.approx(hand_a, rel=1e-12, abs=1e-12)
        assert returns[row, :n].tolist() == pytest.approx(hand_g, rel=1e-12, abs=1e-12)
        assert advantages[row, n:].abs().sum() == 0 and returns[row, n:].abs().sum() == 0


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 6),
    gamma=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_gae_limits(length, gamma, seed):
    """λ = 1: A_t = Σ_l γ^l r_{t+l} − V_t (Monte Carlo); λ = 0: A_t = δ_t (one-step TD)."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(1, length, generator=generator, dtype=torch.float64)
    values = torch.randn(1, length, generator=generator, dtype=torch.float64)
    mask = torch.ones(1, length, dtype=torch.bool)
    mc, returns = generalized_advantages(rewards, values, mask, gamma=gamma, lam=1.0)
    td, _ = generalized_advantages(rewards, values, mask, gamma=gamma, lam=0.0)
    for t in range(length):
        discounted = sum(gamma**k * float(rewards[0, t + k]) for k in range(length - t))
        assert float(mc[0, t]) == pytest.approx(discounted - float(values[0, t]), abs=1e-9)
        assert float(returns[0, t]) == pytest.approx(discounted, abs=1e-9)
        next_value = float(values[0, t + 1]) if t + 1 < length else 0.0
        delta = float(rewards[0, t]) + gamma * next_value - float(values[0, t])
        assert float(td[0, t]) == pytest.approx(delta, abs=1e-9)


def test_clipped_policy_loss_against_hand_values():
    # ratios e^{0.5}=1.6487 (A=+1: clipped to 1.2), e^{-0.5}=0.6065 (A=+2: unclipped
    # min(-2*0.6065, -2*0.8)=...), 1.0 (A=-1), and a padded entry that must not count
    logps = torch.tensor([[0.5, -0.5, 0.0, 9.0]])
    old = torch.zeros(1, 4)
    advantages = torch.tensor([[1.0, 2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, fraction, approx_kl = clipped_policy_loss(logps, old, advantages, mask, 0.2)
    terms = [
        max(-1.0 * math.exp(0.5), -1.0 * 1.2),  # = -1.2 (clipped)
        max(-2.0 * math.exp(-0.5), -2.0 * 0.8),  # = -1.2131 (unclipped: pessimistic)
        max(1.0 * 1.0, 1.0 * 1.0),  # = 1.0
    ]
    assert float(loss) == pytest.approx(sum(terms) / 3, rel=1e-6)
    assert float(fraction) == pytest.approx(1 / 3)
    assert float(approx_kl) == pytest.approx((0.125 + 0.125 + 0) / 3, rel=1e-6)
    # gradient: zero through the clipped entry, -A·ρ elsewhere (divided by the 3 tokens)
    logps.requires_grad_(True)
    clipped_policy_loss(logps, old, advantages, mask, 0.2)[0].backward()
    expected = [0.0, -2.0 * math.exp(-0.5) / 3, 1.0 / 3, 0.0]
    assert logps.grad[0].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_clipped_value_loss_against_hand_values():
    values = torch.tensor([[1.0, 0.0, 3.0]])
    old = torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss = clipped_value_loss(values, old, returns, mask, 0.2)
    # entry 0: clipped value 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69; entry 1: (0-1)^2 = 1
    assert float(loss) == pytest.approx(0.5 * (1.69 + 1.0) / 2, rel=1e-6)


def test_kl_penalized_rewards_and_whitening():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    reference = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logps, reference, mask, 0.1)
    expected = [[-0.05, 0.1, 0.0 + 2.0], [-0.05 - 1.0, 0.0, 0.0]]
    assert rewards.tolist() == [pytest.approx(row) for row in expected]
    whitened = masked_whiten(torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), mask)
    kept = whitened[mask.bool()]
    assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(kept.var(unbiased=False)) == pytest.approx(1.0, rel=1e-5)
    assert whitened[1, 1:].abs().sum() == 0


def test_left_align_against_python():
    targets = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0]]).bool()
    flat = torch.arange(1.0, 7.0)  # row-major over the True entries
    out = left_align(flat, targets, width=4)
    assert out.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 0, 0]]


# --- models -------------------------------------------------------------------------------------
def _completions(words):
    return [
        Completion(f"review of the {i}:", f" the {i} was {w}", "toy") for i in ITEMS for w in words
    ]


@pytest.fixture(scope="module")
def setup(one_quiet_thread, train_fixed_reward_model):
    texts = [t for c in _completions(GOOD + BAD) for t in (c.prompt, c.response)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)
    pairs = [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", "toy")
        for i in ITEMS
        for g in GOOD
        for b in BAD
    ]
    with one_quiet_thread():
        reward_model = train_fixed_reward_model(tokenizer, pairs)
        policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
        data = _completions(GOOD[:1] + BAD)  # mostly negative: room for the reward to rise
        train_sft(policy, data, engine=EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=40))
    state = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    return tokenizer, reward_model, policy, state


def _fresh_policy(setup):
    _, _, policy, state = setup
    with torch.no_grad():
        for key, value in policy.trainable_parameters().items():
            value.copy_(state[key])
    return policy


@pytest.mark.parametrize("preset", ["pythia-tiny", "t5-tiny"])
def test_value_head_forward_matches_the_policy(setup, preset):
    tokenizer = setup[0]
    policy = Policy.from_preset(preset, tokenizer, seed=0, lora=LoraSpec(r=4))
    batch = policy.completion_collator()(_completions(["great", "awful and noisy"])[:5])
    actor_critic = PolicyWithValueHead(policy, seed=0)
    logps, values = actor_critic.token_logps_and_values(batch)
    mask = response_token_mask(batch)
    sums, n_tokens = policy.sequence_logps(batch)
    torch.testing.assert_close((logps * mask).sum(dim=1), sums)
    assert mask.sum(dim=1).tolist() == n_tokens.tolist()
    assert logps.shape == values.shape == mask.shape
    assert float((values.detach() * ~mask).abs().sum()) == 0.0
    trainable = {n for n, p in actor_critic.named_parameters() if p.requires_grad}
    assert {"value_head.weight", "value_head.bias"} <= trainable
    assert any(n.startswith("policy.") and "lora" in n for n in trainable)


def test_ppo_raises_the_mean_reward_of_rollouts(setup, tmp_path):
    _, reward_model, _, _ = setup
    policy = _fresh_policy(setup)
    prompts = [f"review of the {item}:" for item in ITEMS]
    config = PPOConfig(
        iterations=12,
        rollout_size=16,
        ppo_epochs=2,
        kl_coef=0.02,
        generation=GenerationOptions(max_new_tokens=8),
    )
    log = tmp_path / "ppo.jsonl"
    result = train_ppo(
        policy,
        reward_model,
        prompts,
        config,
        engine=EngineConfig(lr=2e-3, micro_batch_size=8, max_steps=1000, seed=0),
        log_path=log,
    )
    scores = result.series("score")
    print("PPO mean rollout score per iteration:", [round(s, 3) for s in scores])
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 2.0
    first = result.history[0]
    assert first["step"] == 4  # 2 epochs x 2 minibatches of 8
    assert {"kl", "policy_loss", "value_loss", "clip_fraction", "approx_kl"} <= set(first)
    assert len(log.read_text().splitlines()) == 12
    assert json.loads(log.read_text().splitlines()[0])["iteration"] == 0
    assert result.actor_critic is not None and result.actor_critic.policy is policy


def test_ppo_bad_input(setup):
    _, reward_model, _, _ = setup
    policy = _fresh_policy(setup)
    with pytest.raises(ValueError, match=r"PPOConfig\.lam"):
        PPOConfig(lam=1.5)
    with pytest.raises(ValueError, match=r"PPOConfig\.clip_range"):
        PPOConfig(clip_range=0.0)
    with pytest.raises(ValueError, match="prompts must be a non-empty sequence"):
        train_ppo(policy, reward_model, [])
    with pytest.raises(ValueError, match="zero_stage <= 2"):
        train_ppo(
            policy, reward_model, ["x"], engine=EngineConfig(backend="deepspeed", zero_stage=3)
        )
    with pytest.raises(ValueError, match="at least one response token"):
        kl_penalized_rewards(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, 2),
                             torch.zeros(1, 2), 0.1)  # fmt: skip
