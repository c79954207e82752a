"""Named presets: real architectures, seeded random weights, clear errors for unknown names."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaForCausalLM,
    GPTNeoXForCausalLM,
    T5ForConditionalGeneration,
)

from oodpl.models.errors import UnknownArchitectureError
from oodpl.models.presets import (
    PRESETS,
    build_model,
    build_model_from_config,
    config_from_dict,
    family_of_config,
    get_preset,
    preset_config,
)

EXPECTED_CLASS = {
    "pythia-tiny": GPTNeoXForCausalLM,
    "gemma-tiny": GemmaForCausalLM,
    "t5-tiny": T5ForConditionalGeneration,
}


def test_tiny_presets_are_small_real_architectures(tokenizer, arch):
    name = arch
    model = build_model(name, tokenizer, seed=0)
    assert type(model) is EXPECTED_CLASS[name]
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 500_000
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.get_text_config().hidden_size == 64
    assert not model.training
    assert family_of_config(model.config) == PRESETS[name].family


def test_seeded_weights_and_global_rng_untouched(tokenizer, arch):
    name = arch
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model(name, tokenizer, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model(name, tokenizer, seed=7)
    c = build_model(name, tokenizer, seed=8)
    for (name_a, pa), (_, pb), (_, _pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name_a
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert any(not torch.equal(pa, pc) for pa, pc in pairs)


def test_pythia_160m_shape(tokenizer):
    config = preset_config("pythia-160m", tokenizer)
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads)
    assert shape == (768, 12, 12)
    assert (config.intermediate_size, config.vocab_size) == (3072, 50304)
    assert config.max_position_embeddings == 2048
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 160e6 < n_params < 165e6  # Pythia-160M has 162,322,944 parameters


def test_attn_implementation_is_configurable(tokenizer):
    model = build_model("pythia-tiny", tokenizer, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"attn_implementation.*Did you mean 'sdpa'"):
        build_model("pythia-tiny", tokenizer, attn_implementation="spda")


def test_unknown_preset_suggests_close_match(tokenizer):
    with pytest.raises(UnknownArchitectureError, match="Did you mean 'pythia-tiny'") as info:
        build_model("pythia-tny", tokenizer)
    message = str(info.value)
    assert "pythia-tny" in message
    for name in PRESETS:
        assert name in message
    with pytest.raises(TypeError, match="preset name"):
        get_preset(3)


def test_unknown_model_type_in_config(tokenizer):
    with pytest.raises(UnknownArchitectureError, match=r"'gpt-neo-x'.*Did you mean 'gpt_neox'"):
        config_from_dict({"model_type": "gpt-neo-x", "hidden_size": 64})
    with pytest.raises(UnknownArchitectureError, match="model_type"):
        config_from_dict({"hidden_size": 64})
    with pytest.raises(UnknownArchitectureError, match="'vit'"):
        # a real transformers architecture that is not a language model
        build_model_from_config({"model_type": "vit"})


def test_build_from_mapping(tokenizer):
    values = preset_config("gemma-tiny", tokenizer).to_dict()
    model = build_model_from_config(values, seed=3)
    assert type(model) is GemmaForCausalLM


def test_fixed_vocabulary_too_small(tokenizer, monkeypatch):
    import dataclasses

    assert preset_config("pythia-160m", tokenizer).vocab_size == 50304
    small = dataclasses.replace(PRESETS["pythia-160m"], fixed_vocab_size=len(tokenizer) - 1)
    monkeypatch.setitem(PRESETS, "pythia-160m", small)
    with pytest.raises(ValueError, match="fixed vocabulary"):
        preset_config("pythia-160m", tokenizer)
