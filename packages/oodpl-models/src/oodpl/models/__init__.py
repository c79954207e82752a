"""oodpl-models: reward models and policies, LoRA, training engines and trainers.

- :class:`RewardModel` — a causal LM or T5 with a scalar value head on the last non-padding
  token (METHODS §1); ``rewards(batch)``, ``preference_rewards(pair_batch)``.
- :class:`Policy` — ``sequence_logps(batch) -> (sum_logps, n_tokens)`` over response tokens,
  generation, a frozen reference copy or precomputed reference log-probs.
- :mod:`oodpl.models.presets` / :mod:`oodpl.models.tokenizer` — tiny random-weight presets of
  Pythia, Gemma and T5 with a locally trained byte-level BPE tokenizer (nothing from the hub).
- :mod:`oodpl.models.engine` — one training-engine interface, PyTorch and DeepSpeed ZeRO backends.
- :mod:`oodpl.models.trainers` — RM, DPO, SFT, HPL, OODPL meta-training and meta-test, RJS, PPO.

Public names load lazily (PEP 562): ``import oodpl.models`` costs nothing until a name is used,
and DeepSpeed is imported only when a DeepSpeed engine is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = (
    "bucketing",
    "checkpoint",
    "collate",
    "engine",
    "errors",
    "loading",
    "logps",
    "lora",
    "packed_forward",
    "packing",
    "policy",
    "presets",
    "ref_cache",
    "reward_model",
    "tokenizer",
    "trainers",
)

_EXPORTS = {
    "RewardModel": "reward_model",
    "Policy": "policy",
    "LoraSpec": "lora",
    "second_order_attention": "lora",
    "detached_copy": "lora",
    "set_parameters": "lora",
    "functional_forward": "lora",
    "PreferenceCollator": "collate",
    "CompletionCollator": "collate",
    "TruncationStats": "collate",
    "concat_pair_batch": "collate",
    "split_pair_batch": "collate",
    "is_pair_batch": "collate",
    "train_bpe_tokenizer": "tokenizer",
    "record_texts": "tokenizer",
    "PRESETS": "presets",
    "build_model": "presets",
    "preset_config": "presets",
    "load_language_model": "loading",
    "load_tokenizer": "loading",
    "load": "checkpoint",
    "merge_and_save": "checkpoint",
    "EngineConfig": "engine",
    "TrainingEngine": "engine",
    "build_engine": "engine",
    "OodplModelError": "errors",
    "UnknownArchitectureError": "errors",
    "ModelNotCachedError": "errors",
    "CheckpointError": "errors",
    "TokenizerError": "errors",
    "RecordError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"oodpl.models.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"oodpl.models.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'oodpl.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_EXPORTS])


if TYPE_CHECKING:
    from oodpl.models.checkpoint import load, merge_and_save
    from oodpl.models.collate import (
        CompletionCollator,
        PreferenceCollator,
        TruncationStats,
        concat_pair_batch,
        is_pair_batch,
        split_pair_batch,
    )
    from oodpl.models.engine import EngineConfig, TrainingEngine, build_engine
    from oodpl.models.errors import (
        CheckpointError,
        ModelNotCachedError,
        OodplModelError,
        RecordError,
        TokenizerError,
        UnknownArchitectureError,
    )
    from oodpl.models.loading import load_language_model, load_tokenizer
    from oodpl.models.lora import (
        LoraSpec,
        detached_copy,
        functional_forward,
        second_order_attention,
        set_parameters,
    )
    from oodpl.models.policy import Policy
    from oodpl.models.presets import PRESETS, build_model, preset_config
    from oodpl.models.reward_model import RewardModel
    from oodpl.models.tokenizer import record_texts, train_bpe_tokenizer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "CompletionCollator",
    "EngineConfig",
    "LoraSpec",
    "ModelNotCachedError",
    "OodplModelError",
    "Policy",
    "PreferenceCollator",
    "RecordError",
    "RewardModel",
    "TokenizerError",
    "TrainingEngine",
    "TruncationStats",
    "UnknownArchitectureError",
    "__version__",
    "build_engine",
    "build_model",
    "concat_pair_batch",
    "detached_copy",
    "functional_forward",
    "is_pair_batch",
    "load",
    "load_language_model",
    "load_tokenizer",
    "merge_and_save",
    "preset_config",
    "record_texts",
    "second_order_attention",
    "set_parameters",
    "split_pair_batch",
    "train_bpe_tokenizer",
]
