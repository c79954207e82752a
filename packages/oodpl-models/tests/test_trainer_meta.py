"""OODPL meta-trainer ([OODPL] Alg. 1): one meta step's hypergradient against central finite
differences of the full unrolled computation (float64, K=2, a handful of RM scalars), the
hypergradient variants through the trainer, several meta-steps lowering the held-out outer loss,
T5, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.engine import EngineConfig
from oodpl.models.lora import LoraSpec, set_parameters
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.tokenizer import train_bpe_tokenizer
from oodpl.models.trainers.meta import MetaDomain, MetaTrainConfig, minibatches, train_meta
from oodpl.models.trainers.sft import train_sft

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
ITEMS = {"d1": ["book", "film", "novel", "album"], "d2": ["kettle", "lamp", "chair", "phone"]}
HELD_OUT_ITEMS = {"d1": ["poem", "song"], "d2": ["fan", "desk"]}


def _completions(items, domain):
    return [
        Completion(f"review of the {i}:", f" the {i} was {w}", domain)
        for i in items
        for w in GOOD + BAD
    ]


def _preferences(items, domain):
    return [
        Preference(f"review of the {i}:", f" the {i} was {g}", f" the {i} was {b}", domain)
        for i in items
        for g in GOOD
        for b in BAD
    ]


@pytest.fixture(scope="module")
def tokenizer():
    texts = []
    for domain, items in ITEMS.items():
        for record in _completions(items + HELD_OUT_ITEMS[domain], domain):
            texts += [record.prompt, record.response]
    return train_bpe_tokenizer(texts, vocab_size=300, model_max_length=64)


def _noise_(module, seed, scale=0.1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def _small_problem(tokenizer, preset="pythia-tiny", dtype=torch.float64, attn="sdpa"):
    """One domain whose support batch (16 completions) and query batch (6 pairs) are the whole
    data, so every minibatch the trainer draws holds the same records (order is irrelevant)."""
    kwargs = {"seed": 0, "attn_implementation": attn, "dtype": dtype}
    policy = Policy.from_preset(preset, tokenizer, lora=LoraSpec(r=4), **kwargs)
    reward_model = RewardModel.from_preset(
        preset, tokenizer, lora=LoraSpec(r=2), **{**kwargs, "seed": 1}
    )
    _noise_(policy, seed=2, scale=0.05)
    _noise_(reward_model, seed=3, scale=0.3)
    support = _completions(["book", "film"], "d1")
    query = _preferences(["book", "film"], "d1")[::5][:6]
    return policy, reward_model, {"d1": MetaDomain(support, query)}


def _unrolled_outer_loss(policy, reward_model, domain, inner_steps, inner_lr, beta):
    """``L_out(θ^K(φ))`` with the live models (no functional calls): K SGD steps on the RWR loss
    with the reward model's current parameters, then the policy preference loss."""
    theta_init = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    support = policy.completion_collator()(domain.fine_tuning)
    support_rm = reward_model.completion_collator()(domain.fine_tuning)
    query = policy.preference_collator()(domain.preferences)
    live = policy.trainable_parameters()
    theta = dict(theta_init)
    try:
        with torch.no_grad():
            rewards = reward_model.rewards(support_rm)
        for _ in range(inner_steps):
            set_parameters(policy, theta)
            logps, n_tokens = policy.sequence_logps(support)
            loss = reward_weighted_regression_loss(logps, n_tokens, rewards, beta=beta)
            grads = torch.autograd.grad(loss, list(live.values()))
            theta = {k: theta[k] - inner_lr * g for k, g in zip(live, grads, strict=True)}
        set_parameters(policy, theta)
        with torch.no_grad():
            return float(policy_preference_loss(*policy.preference_logps(query)))
    finally:
        set_parameters(policy, theta_init)


LORA_B0 = "model.base_model.model.gpt_neox.layers.0.attention.query_key_value.lora_B.default.weight"
LORA_B1 = LORA_B0.replace("layers.0", "layers.1")
ENTRIES = [
    ("value_head.weight", (0, 0)),
    ("value_head.weight", (0, 17)),
    ("value_head.weight", (0, 42)),
    (LORA_B0, (3, 1)),
    (LORA_B1, (100, 0)),
]


def _one_meta_step(policy, reward_model, domains, **overrides):
    """Run one outer SGD step with lr 1 and return (hypergradient = φ_0 − φ_1, result); φ is
    restored afterwards."""
    phi = reward_model.trainable_parameters()
    before = {k: v.detach().clone() for k, v in phi.items()}
    options = {"steps": 1, "inner_steps": 2, "inner_lr": 0.5, "beta": 0.7}
    options.update(outer_optimizer="sgd", outer_lr=1.0)
    options.update(support_batch_size=16, query_batch_size=6, **overrides)
    result = train_meta(reward_model, policy, domains, MetaTrainConfig(**options))
    grad = {k: before[k] - phi[k].detach() for k in phi}
    set_parameters(reward_model, before)
    return grad, result


@pytest.mark.parametrize(
    ("attn", "eps", "rel", "abs_"),
    [
        # SDPA (run by the trainer on its math backend): float64 end to end
        ("sdpa", 1e-6, 1e-6, 1e-9),
        # eager GPT-NeoX attention takes its softmax in float32 even in a float64 model, so
        # finite differences carry ~1e-7/eps round-off: a wider step and a looser match
        ("eager", 1e-4, 2e-3, 1e-4),
    ],
)
def test_meta_step_hypergradient_matches_finite_differences(tokenizer, attn, eps, rel, abs_):
    policy, reward_model, domains = _small_problem(tokenizer, attn=attn)
    theta_before = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    grad, result = _one_meta_step(policy, reward_model, domains)
    # the policy's own parameters are θ_init and stay untouched
    for key, value in policy.trainable_parameters().items():
        assert torch.equal(value, theta_before[key])
    record = result.history[0]
    base = _unrolled_outer_loss(policy, reward_model, domains["d1"], 2, 0.5, 0.7)
    assert record["outer_loss"] == pytest.approx(base, rel=1e-6 if attn == "eager" else 1e-10)
    norm = math.sqrt(sum(float((g**2).sum()) for g in grad.values()))
    assert record["hypergrad_norm"] == pytest.approx(norm, rel=1e-9)
    assert record["inner_loss_first"] > 0 and math.isfinite(record["inner_loss"])

    phi = reward_model.trainable_parameters()
    measured = []
    for key, index in ENTRIES:
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                phi[key][index] += sign * eps
            values.append(_unrolled_outer_loss(policy, reward_model, domains["d1"], 2, 0.5, 0.7))
            with torch.no_grad():
                phi[key][index] -= sign * eps
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = float(grad[key][index])
        measured.append((key.split(".")[-3] if "lora" in key else key, analytic, numeric))
        assert analytic == pytest.approx(numeric, rel=rel, abs=abs_), measured[-1]
    assert max(abs(a) for _, a, _ in measured) > 1e-4  # a test that can fail
    # softmax weights are shift-invariant: the value-head bias gets an exactly-zero hypergradient
    assert abs(float(grad["value_head.bias"][0])) < 1e-12
    print(f"hypergradient vs finite differences ({attn}):", measured)


def test_hypergradient_variants_through_the_trainer(tokenizer):
    policy, reward_model, domains = _small_problem(tokenizer)
    exact, _ = _one_meta_step(policy, reward_model, domains)
    full_truncation, _ = _one_meta_step(
        policy, reward_model, domains, method="truncated", method_options={"truncate": 2}
    )
    first_order, _ = _one_meta_step(
        policy, reward_model, domains, method="first_order", method_options={"radius": 1e-4}
    )
    one_step, _ = _one_meta_step(
        policy, reward_model, domains, method="truncated", method_options={"truncate": 1}
    )
    forward, _ = _one_meta_step(  # one-sided differences against the inner loop's gradients
        policy,
        reward_model,
        domains,
        method="first_order",
        method_options={"radius": 1e-4, "scheme": "forward"},
    )
    flat = {name: torch.cat([g.flatten() for g in d.values()]) for name, d in [
        ("exact", exact), ("truncated2", full_truncation), ("first_order", first_order),
        ("truncated1", one_step)]}  # fmt: skip
    torch.testing.assert_close(flat["truncated2"], flat["exact"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(flat["first_order"], flat["exact"], rtol=1e-4, atol=1e-8)
    forward_flat = torch.cat([g.flatten() for g in forward.values()])
    # O(R) truncation error: compared as a whole vector
    assert float((forward_flat - flat["exact"]).norm() / flat["exact"].norm()) < 1e-3
    assert not torch.equal(forward_flat, flat["first_order"])
    cosine = torch.nn.functional.cosine_similarity(flat["truncated1"], flat["exact"], dim=0)
    assert 0.0 < float(cosine) < 1.0 - 1e-9  # an approximation, pointing the same way
    for method in ("neumann", "cg"):
        grad, result = _one_meta_step(
            policy, reward_model, domains, method=method, method_options={"terms": 3}
        )
        assert math.isfinite(result.history[0]["hypergrad_norm"])
        assert all(bool(torch.isfinite(g).all()) for g in grad.values())


def test_meta_training_lowers_held_out_outer_loss(tokenizer, tmp_path):
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=4))
    domains = {
        d: MetaDomain(_completions(items, d), _preferences(items, d)) for d, items in ITEMS.items()
    }
    held_out = {d: _preferences(items, d) for d, items in HELD_OUT_ITEMS.items()}
    sft_data = [c for domain in domains.values() for c in domain.fine_tuning]
    train_sft(policy, sft_data, engine=EngineConfig(lr=1e-2, micro_batch_size=8, max_steps=40))
    reward_model = RewardModel.from_preset("pythia-tiny", tokenizer, seed=1, lora=LoraSpec(r=4))
    lora_before = {k: v.detach().clone() for k, v in reward_model.trainable_parameters().items()}
    config = MetaTrainConfig(
        steps=20,
        inner_steps=2,
        inner_lr=0.05,
        beta=0.25,
        support_batch_size=8,
        query_batch_size=16,
        outer_optimizer="adam",
        outer_lr=0.02,
        eval_every=5,
    )
    log = tmp_path / "meta.jsonl"
    result = train_meta(reward_model, policy, domains, config, held_out=held_out, log_path=log)
    curve = [entry["outer_loss"] for entry in result.held_out]
    print("held-out outer loss at steps 0/5/10/15/20:", curve)
    assert [entry["step"] for entry in result.held_out] == [0, 5, 10, 15, 20]
    # noisy single-minibatch meta-gradients: the curve is not monotone, but every later point
    # is below the start and their mean clearly so
    assert max(curve[1:]) < curve[0]
    assert sum(curve[1:]) / 4 < curve[0] - 0.01
    assert result.held_out[-1]["pl_accuracy"] > result.held_out[0]["pl_accuracy"]
    assert len(result.history) == 20 and result.history[0]["domains"] == ["d1", "d2"]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [line for line in lines if not line.get("held_out")]
    assert [line["step"] for line in steps] == list(range(1, 21))
    assert {"inner_loss", "outer_loss", "hypergrad_norm", "d1/outer_loss"} <= set(steps[0])
    assert sum(1 for line in lines if line.get("held_out")) == 5
    changed = [
        k
        for k, v in reward_model.trainable_parameters().items()
        if not torch.equal(v, lora_before[k])
    ]
    assert any("lora_B" in k for k in changed) and "value_head.weight" in changed


def test_value_head_only_and_t5(tokenizer):
    policy, reward_model, domains = _small_problem(tokenizer, "t5-tiny", torch.float32)
    before = {k: v.detach().clone() for k, v in reward_model.trainable_parameters().items()}
    config = MetaTrainConfig(
        steps=2,
        inner_steps=2,
        inner_lr=0.1,
        reward_parameters="value_head",
        outer_lr=0.5,
        outer_optimizer="sgd",  # Adam would blow the bias's round-off gradient up to a full step
    )
    result = train_meta(reward_model, policy, domains, config)
    assert len(result.history) == 2
    for key, value in reward_model.trainable_parameters().items():
        # the bias gets a zero hypergradient (softmax weights are shift-invariant)
        assert torch.equal(value, before[key]) != (key == "value_head.weight"), key


def test_meta_bad_input_names_the_argument(tokenizer):
    policy, reward_model, domains = _small_problem(tokenizer, dtype=torch.float32)
    with pytest.raises(ValueError, match="torch-only"):
        MetaTrainConfig(backend="deepspeed")
    with pytest.raises(ValueError, match=r"MetaTrainConfig\.method"):
        MetaTrainConfig(method="implicit")
    with pytest.raises(ValueError, match=r"MetaTrainConfig\.inner_lr"):
        MetaTrainConfig(inner_lr=0.0)
    with pytest.raises(ValueError, match="domains must be a non-empty mapping"):
        train_meta(reward_model, policy, {})
    with pytest.raises(TypeError, match=r"domains\['d1'\] must be a MetaDomain"):
        train_meta(reward_model, policy, {"d1": (1, 2)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"domains\['d1'\]\.fine_tuning\[0\]"):
        bad = MetaDomain(domains["d1"].preferences, domains["d1"].preferences)
        train_meta(reward_model, policy, {"d1": bad})
    with pytest.raises(ValueError, match=r"held_out\['zz'\]"):
        train_meta(reward_model, policy, domains, held_out={"zz": domains["d1"].preferences})
    with pytest.raises(TypeError, match="reward_model must be"):
        train_meta(policy, policy, domains)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(1, 12), seed=st.integers(0, 1000))
def test_minibatches_partition_one_epoch(n, size, seed):
    """Disjoint equal-size batches; the remainder is dropped unless the data is one short batch."""
    batches = list(minibatches(list(range(n)), size, torch.Generator().manual_seed(seed)))
    expected = min(size, n)
    assert all(len(b) == expected for b in batches)
    assert len(batches) == n // expected
    seen = [i for b in batches for i in b]
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(n))
