"""Per-sample gradients of the reward model's per-row rewards (``oodpl.models.per_sample_grads``).

One forward + one backward with hooks must equal a brute-force loop of ``autograd.grad(a[i], φ)``
on a real tiny reward model with LoRA (the parameters swapped in by ``functional_call``); a
parameter outside ``nn.Linear`` (or tied), and a forward whose layers do not see the batch
dimension first, raise ``PerSampleGradientError`` naming the problem; hooks are always removed.
"""

from __future__ import annotations

import pytest
import torch

from oodpl.models.lora import LoraSpec
from oodpl.models.per_sample_grads import (
    PerSampleGradientError,
    PerSampleGradients,
    linear_parameter_modules,
)
from oodpl.models.reward_model import RewardModel


@pytest.fixture(scope="module")
def reward_model(tokenizer, perturb):
    model = RewardModel.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=2))
    perturb(model, seed=1, scale=0.2)  # LoRA B starts at zero: make every factor matter
    return model.eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def _brute_force(model, phi, batch):
    leaves = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    rewards = model.functional_rewards(leaves, batch)
    rows = []
    for i in range(rewards.shape[0]):
        grads = torch.autograd.grad(rewards[i], list(leaves.values()), retain_graph=True)
        rows.append(dict(zip(leaves, grads, strict=True)))
    return rewards.detach(), {k: torch.stack([r[k] for r in rows]) for k in leaves}


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_per_sample_gradients_match_a_brute_force_loop(reward_model, completions, padding_side):
    phi = reward_model.trainable_parameters()
    assert any("lora_A" in k for k in phi) and "value_head.bias" in phi
    batch = reward_model.completion_collator(padding_side=padding_side)(completions[:5])
    hooks = _hook_count(reward_model)
    jacobian = PerSampleGradients(reward_model, phi)
    value, per_sample = jacobian(phi, lambda p: reward_model.functional_rewards(p, batch))
    assert _hook_count(reward_model) == hooks
    expected_value, expected = _brute_force(reward_model, phi, batch)
    torch.testing.assert_close(value, expected_value, rtol=1e-6, atol=1e-6)
    assert per_sample.keys() == phi.keys()
    for key, grads in expected.items():
        assert per_sample[key].shape == (5, *phi[key].shape)
        assert float(grads.abs().max()) > 0, key
        torch.testing.assert_close(per_sample[key], grads, rtol=1e-5, atol=1e-5, msg=key)


def test_a_subset_of_parameters(reward_model, completions):
    phi = {k: v for k, v in reward_model.trainable_parameters().items() if "lora_B" in k}
    batch = reward_model.completion_collator()(completions[:3])
    _, per_sample = PerSampleGradients(reward_model, phi)(
        phi, lambda p: reward_model.functional_rewards(p, batch)
    )
    _, expected = _brute_force(reward_model, phi, batch)
    for key in phi:
        torch.testing.assert_close(per_sample[key], expected[key], rtol=1e-5, atol=1e-5)


def test_non_linear_parameters_are_rejected(tokenizer):
    model = RewardModel.from_preset("pythia-tiny", tokenizer, seed=0, lora=None)
    names = [k for k in model.trainable_parameters() if "layernorm" in k or "embed_in" in k]
    assert names
    with pytest.raises(PerSampleGradientError, match=r"not the weight or bias of an nn\.Linear"):
        linear_parameter_modules(model, names[:1])
    with pytest.raises(PerSampleGradientError, match="names no parameter"):
        linear_parameter_modules(model, ["nope.weight"])


def test_tied_parameters_are_rejected():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

    with pytest.raises(PerSampleGradientError, match="tied"):
        linear_parameter_modules(Tied(), ["a.weight"])


def test_a_forward_mixing_rows_is_rejected_and_hooks_removed():
    layer = torch.nn.Linear(4, 1)
    params = dict(layer.named_parameters())
    jacobian = PerSampleGradients(layer, params)

    def flattened(p):  # the layer sees [1, B*4]: no leading batch dimension
        x = torch.randn(3, 4).reshape(1, 12)[:, :4]
        return torch.func.functional_call(layer, p, (x,)).reshape(1)

    with pytest.raises(PerSampleGradientError, match="does not lead with the batch dimension"):
        jacobian(params, lambda p: flattened(p).expand(3))
    assert not layer._forward_hooks


def test_linear_layer_called_twice():
    """Calls of one layer add up (Σ over calls of gᵀx)."""
    layer = torch.nn.Linear(3, 3, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def forward(p):
        h = torch.func.functional_call(layer, p, (x,))
        return torch.func.functional_call(layer, p, (torch.tanh(h),)).sum(dim=(1, 2))

    params = dict(layer.named_parameters())
    _, per_sample = PerSampleGradients(layer, params)(params, forward)
    for i in range(4):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(forward(leaves)[i], list(leaves.values()))
        for key, grad in zip(leaves, grads, strict=True):
            torch.testing.assert_close(per_sample[key][i], grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("preset", "targets"),
    [
        # LoRA on every Linear: the last layer's attention.dense and MLP run on [B, 1, H] (only
        # the scored positions, oodpl.models.last_layer); dim 0 is still B
        ("pythia-tiny", ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
        ("gemma-tiny", None),
    ],
)
def test_per_sample_gradients_other_layouts(tokenizer, completions, preset, targets, perturb):
    model = RewardModel.from_preset(
        preset, tokenizer, seed=0, lora=LoraSpec(r=2, target_modules=targets)
    )
    perturb(model, seed=4, scale=0.2)
    model.eval()
    phi = model.trainable_parameters()
    if targets is not None:
        assert any("layers.1.mlp.dense_4h_to_h.lora_A" in k for k in phi)
    batch = model.completion_collator()(completions[:4])
    _, per_sample = PerSampleGradients(model, phi)(
        phi, lambda p: model.functional_rewards(p, batch)
    )
    _, expected = _brute_force(model, phi, batch)
    for key in phi:
        torch.testing.assert_close(per_sample[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)
