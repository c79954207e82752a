"""Named model presets with random (seeded) weights, and architecture resolution.

Presets build real ``transformers`` architectures from their configs, so training and tests run the
same code path as a downloaded checkpoint, offline and on CPU:

==============  =========  ===============================================================
name            family     shape
==============  =========  ===============================================================
pythia-tiny     causal     GPT-NeoX, hidden 64, 2 layers, 4 heads, ffn 256, rotary pct 0.25
gemma-tiny      causal     Gemma, hidden 64, 2 layers, 4 heads (2 kv heads, head dim 16), ffn 256
t5-tiny         seq2seq    T5, d_model 64, 2+2 layers, 4 heads (d_kv 16), ffn 256, no dropout
pythia-160m     causal     GPT-NeoX with Pythia-160M's shape (hidden 768, 12 layers, 12
                           heads, ffn 3072, rotary pct 0.25, vocab 50304, max positions 2048)
==============  =========  ===============================================================

Tiny presets take their vocabulary size and special-token ids from the tokenizer (normally one
from :func:`oodpl.models.tokenizer.train_bpe_tokenizer`), have a few hundred thousand parameters,
and use no dropout, so forward passes are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GemmaConfig,
    GPTNeoXConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from oodpl.models.errors import UnknownArchitectureError, close_matches, suggestion_suffix
from oodpl.models.tokenizer import resolve_pad_token_id

Family = Literal["causal", "seq2seq"]
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class PresetSpec:
    """A named architecture: ``make_config(vocab_size, special_ids, max_length)`` builds it."""

    name: str
    family: Family
    model_type: str
    description: str
    make_config: Callable[[int, dict[str, int], int], PretrainedConfig]
    fixed_vocab_size: int | None = None
    max_positions: int | None = None


def _pythia_tiny(vocab: int, ids: dict[str, int], max_length: int) -> PretrainedConfig:
    return GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        rotary_pct=0.25,
        max_position_embeddings=max_length,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        **ids,
    )


def _pythia_160m(vocab: int, ids: dict[str, int], max_length: int) -> PretrainedConfig:
    return GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        **ids,
    )


def _gemma_tiny(vocab: int, ids: dict[str, int], max_length: int) -> PretrainedConfig:
    return GemmaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_length,
        attention_dropout=0.0,
        **ids,
    )


def _t5_tiny(vocab: int, ids: dict[str, int], max_length: int) -> PretrainedConfig:
    return T5Config(
        vocab_size=vocab,
        d_model=64,
        d_kv=16,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=max(max_length, 16),
        dropout_rate=0.0,
        feed_forward_proj="relu",
        decoder_start_token_id=ids["pad_token_id"],
        **ids,
    )


PRESETS: dict[str, PresetSpec] = {
    spec.name: spec
    for spec in (
        PresetSpec("pythia-tiny", "causal", "gpt_neox", "tiny GPT-NeoX (Pythia)", _pythia_tiny),
        PresetSpec("gemma-tiny", "causal", "gemma", "tiny Gemma", _gemma_tiny),
        PresetSpec("t5-tiny", "seq2seq", "t5", "tiny T5 encoder-decoder", _t5_tiny),
        PresetSpec(
            "pythia-160m",
            "causal",
            "gpt_neox",
            "random-weight Pythia-160M shape (benchmarks)",
            _pythia_160m,
            fixed_vocab_size=50304,
            max_positions=2048,
        ),
    )
}


def known_model_types() -> dict[str, Family]:
    """Every ``model_type`` that ``transformers`` can load as a causal or seq2seq LM."""
    types: dict[str, Family] = dict.fromkeys(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "causal")
    types.update(dict.fromkeys(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "seq2seq"))
    return types


def _unknown_architecture(kind: str, name: str) -> UnknownArchitectureError:
    candidates = [*PRESETS, *known_model_types()]
    return UnknownArchitectureError(
        f"unknown {kind} {name!r}.{suggestion_suffix(name, candidates)} Known presets: "
        f"{', '.join(PRESETS)}; known model types: any causal or seq2seq LM of transformers "
        f"({len(known_model_types())} types, e.g. gpt_neox, gemma, llama, t5)."
    )


def get_preset(name: str) -> PresetSpec:
    """The preset called ``name``; a clear error with a close-match suggestion otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__}")
    if name not in PRESETS:
        raise _unknown_architecture("preset", name)
    return PRESETS[name]


def family_of_config(config: PretrainedConfig) -> Family:
    """``"seq2seq"`` for encoder-decoder configs, ``"causal"`` for decoder-only LMs."""
    model_type = getattr(config, "model_type", "")
    families = known_model_types()
    if model_type in families:
        return families[model_type]
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    raise _unknown_architecture("model_type", str(model_type))


def config_from_dict(values: Mapping[str, Any]) -> PretrainedConfig:
    """A ``transformers`` config from a mapping holding ``model_type`` (validated, clear errors)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"config must be a mapping, got {type(values).__name__}")
    model_type = values.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UnknownArchitectureError("config has no 'model_type' field (e.g. 'gpt_neox', 't5')")
    if model_type not in known_model_types():
        raise _unknown_architecture("model_type", model_type)
    rest = {k: v for k, v in values.items() if k != "model_type"}
    return AutoConfig.for_model(model_type, **rest)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """pad/bos/eos ids for a model config (pad falls back to eos, see ``tokenizer``)."""
    pad_id, _ = resolve_pad_token_id(tokenizer)
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_id
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id
    return {"pad_token_id": pad_id, "bos_token_id": int(bos_id), "eos_token_id": int(eos_id)}


def preset_config(
    name: str, tokenizer: PreTrainedTokenizerBase, *, max_length: int | None = None
) -> PretrainedConfig:
    """The config of preset ``name`` sized for ``tokenizer`` (vocabulary, special ids, length)."""
    spec = get_preset(name)
    vocab = len(tokenizer)
    if spec.fixed_vocab_size is not None and vocab > spec.fixed_vocab_size:
        raise ValueError(
            f"tokenizer has {vocab} tokens but preset {name!r} has a fixed vocabulary of "
            f"{spec.fixed_vocab_size}"
        )
    if max_length is None:
        max_length = min(int(tokenizer.model_max_length), spec.max_positions or 2048)
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    return spec.make_config(vocab, special_token_ids(tokenizer), max_length)


def check_attn_implementation(attn_implementation: str) -> str:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        hint = suggestion_suffix(str(attn_implementation), ATTN_IMPLEMENTATIONS)
        raise ValueError(
            f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got "
            f"{attn_implementation!r}.{hint}"
        )
    return attn_implementation


def build_model_from_config(
    config: PretrainedConfig | Mapping[str, Any],
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A randomly initialised LM for ``config``; the global RNG state is left untouched."""
    if isinstance(config, Mapping):
        config = config_from_dict(config)
    if not isinstance(config, PretrainedConfig):
        kind = type(config).__name__
        raise TypeError(f"config must be a PretrainedConfig or a mapping, got {kind}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    check_attn_implementation(attn_implementation)
    family = family_of_config(config)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model.eval()
    return model


def build_model(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
) -> PreTrainedModel:
    """Preset ``name`` with random weights drawn from ``seed`` (same seed, same weights)."""
    config = preset_config(name, tokenizer, max_length=max_length)
    return build_model_from_config(
        config, seed=seed, attn_implementation=attn_implementation, dtype=dtype
    )


__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "PRESETS",
    "Family",
    "PresetSpec",
    "build_model",
    "build_model_from_config",
    "check_attn_implementation",
    "close_matches",
    "config_from_dict",
    "family_of_config",
    "get_preset",
    "known_model_types",
    "preset_config",
    "special_token_ids",
]
