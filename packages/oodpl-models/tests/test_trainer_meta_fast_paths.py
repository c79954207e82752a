"""The meta-trainer's fast paths equal the plain ones (METHODS §3) on real tiny models:

* per-sample Jacobians of the support rewards (``MetaTrainConfig.reward_jacobian``): the
  hypergradient of every iterative method equals the vector-Jacobian path (float64, 1e-10),
  and falls back where ``φ`` is not made of ``nn.Linear`` weights or ``B·|φ| > |θ|``;
* packed (prefix-shared) query batches (``MetaTrainConfig.pack_queries``): ``L_out``, its
  θ-gradient and a full-graph hypergradient through it (under ``second_order_attention``)
  equal the padded query batch (float32, 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from oodpl.core.hypergrad import hypergradient
from oodpl.core.records import Completion, Preference
from oodpl.models.lora import LoraSpec, second_order_attention
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers.meta import BilevelObjective, MetaTrainConfig

GOOD = ["great", "lovely", "sturdy", "superb"]
BAD = ["awful", "boring", "broken", "noisy"]
REWARD_LORA = LoraSpec(r=2)


def _models(tokenizer, perturb, dtype, reward_lora=REWARD_LORA):
    kwargs = {"seed": 0, "attn_implementation": "sdpa", "dtype": dtype}
    policy = Policy.from_preset("pythia-tiny", tokenizer, lora=LoraSpec(r=4), **kwargs)
    reward_model = RewardModel.from_preset(
        "pythia-tiny", tokenizer, lora=reward_lora, **{**kwargs, "seed": 1}
    )
    perturb(policy, seed=2, scale=0.05)
    perturb(reward_model, seed=3, scale=0.3)
    return policy.eval(), reward_model.eval()


def _support(objective, n_batches=3, size=6):
    records = [
        Completion(f"review {i} of the {item}:", f" the {item} was {word}", "d")
        for i, item in enumerate(["book", "film", "lamp"])
        for word in GOOD + BAD
    ]
    return [objective.support_batch(records[k::n_batches][:size]) for k in range(n_batches)]


def _pairs(repeat=1):
    return [
        Preference(
            f"what did you think of the {item}? be honest." * repeat,
            f" the {item} was {g}",
            f" the {item} was {b} and sadly so",
            "d",
        )
        for item in ["book", "film", "lamp"]
        for g, b in zip(GOOD[:2], BAD[:2], strict=True)
    ]


def _hypergradient(objective, theta0, phi, support, query, method, options):
    return hypergradient(
        objective.inner_loss,
        objective.outer_loss,
        theta0,
        phi,
        support,
        query,
        lr=0.5,
        method=method,
        **options,
    )


def _flat(grad):
    return torch.cat([g.flatten() for g in grad.values()])


@pytest.mark.parametrize(
    ("method", "options", "kept"),
    [
        ("unrolled", {}, 3),
        ("truncated", {"truncate": 1}, 1),
        ("first_order", {"radius": 1e-3}, 3),
        ("first_order", {"radius": 1e-3, "scheme": "forward"}, 3),
    ],
)
def test_reward_jacobian_equals_the_vjp_path(tokenizer, method, options, kept, perturb):
    policy, reward_model = _models(tokenizer, perturb, torch.float64)
    fast = BilevelObjective(policy, reward_model, MetaTrainConfig())
    slow = BilevelObjective(policy, reward_model, MetaTrainConfig(reward_jacobian=False))
    assert fast.inner_loss.feature_jacobian is not None
    assert slow.inner_loss.feature_jacobian is None
    support = _support(fast)
    query = fast.query_batch(_pairs())
    theta0 = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    phi = reward_model.trainable_parameters()
    a = _hypergradient(fast, theta0, phi, support, query, method, options)
    b = _hypergradient(slow, theta0, phi, support, query, method, options)
    assert a.details["feature_jacobian_steps"] == kept
    assert "feature_jacobian_steps" not in b.details
    scale = float(_flat(b.grad).norm())
    assert scale > 1e-6
    assert float((_flat(a.grad) - _flat(b.grad)).norm()) < 1e-10 * scale
    assert a.inner_losses == pytest.approx(b.inner_losses, rel=1e-12)


def test_reward_jacobian_falls_back_where_it_does_not_apply(tokenizer, completions, perturb):
    # φ = every trainable weight of a reward model without LoRA: embeddings and layer norms too
    policy, reward_model = _models(tokenizer, perturb, torch.float32, reward_lora=None)
    objective = BilevelObjective(policy, reward_model, MetaTrainConfig())
    assert objective.inner_loss.feature_jacobian is None
    phi = reward_model.trainable_parameters()
    assert objective.support_reward_jacobian(phi, _support(objective)[0]) is None
    # the value head alone is an nn.Linear: per-sample Jacobians apply
    head = MetaTrainConfig(reward_parameters="value_head")
    objective = BilevelObjective(policy, reward_model, head)
    assert objective.inner_loss.feature_jacobian is not None
    values, jacobian = objective.support_reward_jacobian(
        {k: v for k, v in phi.items() if k.startswith("value_head.")}, _support(objective)[0]
    )
    assert values.shape == (6,) and jacobian["value_head.weight"].shape == (6, 1, 64)
    torch.testing.assert_close(jacobian["value_head.bias"], torch.ones(6, 1))


def test_memory_rule_falls_back_on_the_models(tokenizer, perturb):
    """``θ`` = one LoRA factor (128 numbers) < ``B·|φ|``: the VJP path, same hypergradient."""
    policy, reward_model = _models(tokenizer, perturb, torch.float64)
    fast = BilevelObjective(policy, reward_model, MetaTrainConfig())
    slow = BilevelObjective(policy, reward_model, MetaTrainConfig(reward_jacobian=False))
    theta0 = {
        k: v.detach().clone()
        for k, v in policy.trainable_parameters().items()
        if "layers.0" in k and "lora_A" in k
    }
    assert len(theta0) == 1
    support, query = _support(fast), fast.query_batch(_pairs())
    phi = reward_model.trainable_parameters()
    a = _hypergradient(fast, theta0, phi, support, query, "unrolled", {})
    b = _hypergradient(slow, theta0, phi, support, query, "unrolled", {})
    assert a.details["feature_jacobian_steps"] == 0
    assert a.details["feature_jacobian_declined"] == 1
    torch.testing.assert_close(_flat(a.grad), _flat(b.grad), rtol=1e-10, atol=1e-14)


def _full_graph(objective, theta0, phi, support, query):
    """Autograd through K inner steps and L_out (as the benchmark's ``full_graph`` row)."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    for batch in support:
        loss = objective.inner_loss(theta, phi, batch)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {k: theta[k] - 0.5 * g for k, g in zip(theta, grads, strict=True)}
    outer = objective.outer_loss(theta, query)
    return _flat(dict(zip(phi, torch.autograd.grad(outer, list(phi.values())), strict=True)))


def test_packed_query_batch_equals_padded(tokenizer, perturb):
    policy, reward_model = _models(tokenizer, perturb, torch.float32)
    packed = BilevelObjective(policy, reward_model, MetaTrainConfig())
    padded = BilevelObjective(policy, reward_model, MetaTrainConfig(pack_queries=False))
    assert packed.pack_queries and not padded.pack_queries
    pairs = _pairs(repeat=3)  # long shared prompts: packing="auto" packs them
    q_packed, q_padded = packed.query_batch(pairs), padded.query_batch(pairs)
    assert "shared_input_ids" in q_packed and "chosen_input_ids" in q_padded
    theta0 = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    phi = reward_model.trainable_parameters()
    for context in (torch.enable_grad, second_order_attention):
        results = []
        for objective, query in ((packed, q_packed), (padded, q_padded)):
            with context():
                leaves = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
                loss = objective.outer_loss(leaves, query)
                grad = _flat(
                    dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
                )
            results.append((loss.detach(), grad))
        (loss_a, grad_a), (loss_b, grad_b) = results
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
        assert float(grad_b.norm()) > 1e-4
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-5)
    support = _support(packed, n_batches=2)
    with second_order_attention():  # full_graph: differentiated once more through θ^K(φ)
        full_a = _full_graph(packed, theta0, phi, support, q_packed)
        full_b = _full_graph(padded, theta0, phi, support, q_padded)
    assert float(full_b.norm()) > 1e-6
    torch.testing.assert_close(full_a, full_b, rtol=1e-4, atol=1e-5 * float(full_b.norm()))
    # the hypergradient of the trainer's methods: packed equals padded too
    for method in ("unrolled", "first_order"):
        a = _hypergradient(packed, theta0, phi, support, q_packed, method, {})
        b = _hypergradient(padded, theta0, phi, support, q_padded, method, {})
        assert a.outer_loss == pytest.approx(b.outer_loss, rel=1e-5)
        torch.testing.assert_close(_flat(a.grad), _flat(b.grad), rtol=1e-3, atol=1e-4 * a.grad_norm)


def test_bool_flags_are_checked():
    with pytest.raises(TypeError, match=r"MetaTrainConfig\.reward_jacobian must be a bool"):
        MetaTrainConfig(reward_jacobian=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"MetaTrainConfig\.pack_queries must be a bool"):
        MetaTrainConfig(pack_queries="yes")  # type: ignore[arg-type]
