"""LoRA via peft, named trainable-parameter dicts, and functional calls for torch.func
(the entry points oodpl.core.hypergrad differentiates through, METHODS §3)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from oodpl.models.lora import (
    LoraSpec,
    apply_lora,
    count_parameters,
    detached_copy,
    functional_forward,
    intended_untying,
    second_order_attention,
    set_parameters,
)
from oodpl.models.policy import Policy
from oodpl.models.presets import build_model
from oodpl.models.reward_model import RewardModel


def test_lora_spec_validation_and_round_trip():
    spec = LoraSpec(r=4, alpha=8, dropout=0.1, target_modules=("q", "v"), train_lm_head=False)
    assert LoraSpec.from_dict(spec.to_dict()) == spec
    assert LoraSpec(target_modules="q_proj").target_modules == ("q_proj",)
    for bad, match in (
        ({"r": 0}, "LoraSpec.r"),
        ({"alpha": 0}, "LoraSpec.alpha"),
        ({"dropout": 1.0}, "LoraSpec.dropout"),
        ({"bias": "some"}, "LoraSpec.bias"),
        ({"target_modules": ("",)}, "target_modules"),
    ):
        with pytest.raises(ValueError, match=match):
            LoraSpec(**bad)
    with pytest.raises(ValueError, match="unknown LoraSpec fields"):
        LoraSpec.from_dict({"rank": 4})


def test_fresh_adapter_leaves_outputs_unchanged_and_is_small(tokenizer, completions, arch):
    base = Policy.from_preset(arch, tokenizer, seed=0).eval()
    adapted = Policy.from_preset(arch, tokenizer, seed=0, lora=LoraSpec(r=2)).eval()
    batch = base.completion_collator()(completions[:3])
    with torch.no_grad():
        torch.testing.assert_close(adapted.sequence_logps(batch)[0], base.sequence_logps(batch)[0])
    rm = RewardModel.from_preset(arch, tokenizer, lora=LoraSpec(r=2))
    trainable, total = count_parameters(rm)
    assert trainable < 0.05 * total


def test_unknown_target_modules_give_a_clear_error(tokenizer):
    model = build_model("pythia-tiny", tokenizer)
    with pytest.raises(ValueError, match=r"cannot apply LoRA.*query_key_value"):
        apply_lora(model, LoraSpec(target_modules=("q_proj",)), train_lm_head=False)
    with pytest.raises(TypeError, match="LoraSpec"):
        apply_lora(model, {"r": 2}, train_lm_head=False)


@pytest.mark.parametrize("kind", ["reward", "policy"])
def test_functional_call_matches_module_and_autograd(tokenizer, preferences, perturb, arch, kind):
    lora = LoraSpec(r=2)
    if kind == "reward":
        model = RewardModel.from_preset(arch, tokenizer, seed=0, lora=lora).eval()
        call = model.functional_rewards
    else:
        model = Policy.from_preset(arch, tokenizer, seed=0, lora=lora).eval()
        call = model.functional_sequence_logps
    perturb(model)
    pair = model.preference_collator(padding_side="left")(preferences[:4])

    def loss_of(outputs):
        if kind == "reward":
            chosen, rejected = outputs
        else:
            chosen, c_n, rejected, r_n = outputs
            chosen, rejected = chosen / c_n, rejected / r_n
        return -F.logsigmoid(chosen - rejected).mean()

    params = model.trainable_parameters()
    # same value as the module itself
    torch.testing.assert_close(loss_of(call(params, pair)), loss_of(model(pair)))
    # torch.func.grad w.r.t. the dict == autograd .grad on the live parameters
    func_grads = torch.func.grad(lambda p: loss_of(call(p, pair)))(detached_copy(params))
    loss_of(model(pair)).backward()
    assert func_grads.keys() == params.keys()
    for name, param in params.items():
        torch.testing.assert_close(func_grads[name], param.grad, atol=1e-6, rtol=1e-5)
    # different params -> same as writing them into a copy of the module
    shifted = {k: v.detach() + 0.01 for k, v in params.items()}
    twin = copy.deepcopy(model)
    set_parameters(twin, shifted)
    with torch.no_grad():
        torch.testing.assert_close(loss_of(call(shifted, pair)), loss_of(twin(pair)))


def test_functional_call_rejects_unknown_names_and_shapes(tokenizer, preferences):
    rm = RewardModel.from_preset("pythia-tiny", tokenizer, lora=LoraSpec(r=2))
    pair = rm.preference_collator()(preferences[:2])
    with pytest.raises(ValueError, match=r"value_hed\.weight.*Did you mean 'value_head\.weight'"):
        rm.functional_rewards({"value_hed.weight": torch.zeros(1, 64)}, pair)
    with pytest.raises(ValueError, match=r"params\['value_head\.weight'\] has shape"):
        functional_forward(rm, {"value_head.weight": torch.zeros(2, 64)}, pair)


def _one_step_outer_loss(tokenizer, completions, attn_implementation):
    """phi -> L_out(theta_1(phi)) for one inner SGD step (see the test below)."""
    kwargs = {"dtype": torch.float64, "attn_implementation": attn_implementation}
    rm = RewardModel.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=2), **kwargs)
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=1, lora=LoraSpec(r=2), **kwargs)
    rm.eval(), policy.eval()
    support = policy.completion_collator()(completions[:4])
    query = policy.preference_collator()(
        [{"prompt": completions[4].prompt, "chosen": "the book was great", "rejected": "bad"}]
    )
    theta0 = detached_copy(policy.trainable_parameters())
    alpha, beta = 0.5, 1.0

    def outer_after_step(phi):
        theta = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
        logps, n_tokens = policy.functional_sequence_logps(theta, support)
        weights = len(n_tokens) * torch.softmax(rm.functional_rewards(phi, support) / beta, 0)
        inner = -(weights * logps / n_tokens).mean()
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
        theta1 = {k: v - alpha * g for (k, v), g in zip(theta.items(), grads, strict=True)}
        c, c_n, r, r_n = policy.functional_sequence_logps(theta1, query)
        return -F.logsigmoid(c / c_n - r / r_n).sum()

    return outer_after_step, detached_copy(rm.trainable_parameters(), requires_grad=False)


def _directional_hypergradient(outer_after_step, phi, direction):
    leaf = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    grads = torch.autograd.grad(outer_after_step(leaf), list(leaf.values()))
    return sum((g * direction[k]).sum() for k, g in zip(leaf, grads, strict=True)).detach()


def test_second_order_through_an_inner_step_matches_finite_differences(tokenizer, completions):
    """The bilevel path (METHODS §3) on real transformers: theta (policy LoRA + LM head) takes one
    SGD step on the reward-weighted inner loss L_in(theta; phi) = -mean_b w_b lbar_b with
    w = B softmax(r_phi / beta) ([OODPL] Eq. 10); the outer loss is L_out(theta_1) =
    -log sigma(lbar(y_w) - lbar(y_l)). d L_out / d phi by autograd through the step (mixed
    second derivatives through attention) equals a central finite difference along a random
    direction in float64 (SDPA restricted to its math kernel). The eager kernels agree, to the
    float32 precision of their softmax."""
    outer, phi = _one_step_outer_loss(tokenizer, completions, "sdpa")
    generator = torch.Generator().manual_seed(0)
    direction = {
        k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in phi.items()
    }
    with second_order_attention():  # SDPA's fused CPU kernel has no double backward
        analytic = _directional_hypergradient(outer, phi, direction)
        eps = 1e-5
        plus = outer({k: v + eps * direction[k] for k, v in phi.items()})
        minus = outer({k: v - eps * direction[k] for k, v in phi.items()})
    numeric = ((plus - minus) / (2 * eps)).detach()
    assert abs(float(analytic)) > 1e-4  # the reward model really moves the outer loss
    torch.testing.assert_close(analytic, numeric, atol=1e-9, rtol=1e-6)
    eager_outer, _ = _one_step_outer_loss(tokenizer, completions, "eager")
    eager = _directional_hypergradient(eager_outer, phi, direction)
    torch.testing.assert_close(eager, analytic, atol=1e-8, rtol=1e-4)


def test_lora_models_build_and_reload_without_peft_deprecation_warnings(tokenizer, tmp_path):
    """peft reads transformers 5's deprecated ``is_gradient_checkpointing`` when it wraps or
    loads an adapter; oodpl silences that FutureWarning (the user can do nothing about it) and
    only it: the test turns every FutureWarning into an error, overriding the suite's filters."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        policy = Policy.from_preset("pythia-tiny", tokenizer, lora=LoraSpec(r=2))
        policy.save_pretrained(tmp_path / "policy")
        Policy.load(tmp_path / "policy")
    with warnings.catch_warnings(record=True) as caught:  # other FutureWarnings still pass
        warnings.simplefilter("always")
        with intended_untying():
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
