"""Checkpoints in safetensors that plain ``transformers`` + ``peft`` can read back.

Layout of a saved :class:`RewardModel` / :class:`Policy` directory::

    oodpl_config.json          kind ("reward_model" | "policy"), family, dtype, LoRA spec, files
    config.json                the LM config         } AutoModelForCausalLM / AutoModelForSeq2SeqLM
    model.safetensors          the LM weights        } .from_pretrained(dir) loads these
    generation_config.json
    tokenizer.json, tokenizer_config.json, ...       AutoTokenizer.from_pretrained(dir)
    adapter/                   (LoRA only) PeftModel.from_pretrained(base, dir / "adapter")
    value_head.safetensors     (reward models) {"weight": [1, H], "bias": [1]}

With LoRA the root holds the *base* weights (without adapters; a trained LM-head copy lives in the
adapter), so ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dir), dir/"adapter")``
rebuilds the trained model. :func:`merge_and_save` writes the merged model as a full checkpoint
(value head kept). Only safetensors and JSON are written: no pickles.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from oodpl.models.backbone import unwrap
from oodpl.models.errors import CheckpointError
from oodpl.models.loading import load_language_model, load_tokenizer
from oodpl.models.lora import LoraSpec, intended_untying

CONFIG_NAME = "oodpl_config.json"
ADAPTER_DIR = "adapter"
FORMAT = "oodpl-checkpoint"
FORMAT_VERSION = 1
KINDS = ("reward_model", "policy")


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read: the LM (peft-wrapped with LoRA), tokenizer and extras."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    lora: LoraSpec | None
    config: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def base_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The weights of the LM under a peft wrapper, named as in the unwrapped LM (adapters left out).

    Drops ``lora_*`` tensors and trained ``modules_to_save`` copies, and maps
    ``x.base_layer.w -> x.w`` and ``x.original_module.w -> x.w``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.get_base_model().state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts) or "modules_to_save" in parts:
            continue
        clean = ".".join(p for p in parts if p not in ("base_layer", "original_module"))
        out[clean] = value
    return out


def _untie_if_diverged(lm: PreTrainedModel) -> None:
    """Mark embeddings untied when the output head no longer shares the input embedding weight."""
    out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    if tied and out_emb is not None and out_emb.weight is not in_emb.weight:
        lm.config.tie_word_embeddings = False


def _dtype_name(model: nn.Module) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    lora: LoraSpec | None,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint (layout in the module docstring); returns the directory."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise ValueError(f"directory {str(root)!r} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    lm = unwrap(model)
    stale_adapter = root / ADAPTER_DIR
    if (stale_adapter / "adapter_config.json").is_file():
        shutil.rmtree(stale_adapter)
    if isinstance(model, PeftModel):
        if lora is None:
            raise ValueError("model is peft-wrapped but lora is None")
        lm.save_pretrained(root, state_dict=base_state_dict(model))
        with intended_untying():
            model.save_pretrained(root / ADAPTER_DIR)
    else:
        _untie_if_diverged(lm)
        lm.save_pretrained(root)
    tokenizer.save_pretrained(root)
    tensor_files = {}
    for name, state in (tensors or {}).items():
        file_name = f"{name}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, root / file_name)
        tensor_files[name] = file_name
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "family": "seq2seq" if getattr(lm.config, "is_encoder_decoder", False) else "causal",
        "model_type": lm.config.model_type,
        "dtype": _dtype_name(lm),
        "attn_implementation": getattr(lm.config, "_attn_implementation", None) or "sdpa",
        "lora": lora.to_dict() if lora is not None else None,
        "adapter_dir": ADAPTER_DIR if lora is not None else None,
        "tensors": tensor_files,
        **dict(extra or {}),
    }
    (root / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return root


def read_checkpoint_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``oodpl_config.json`` of a checkpoint, validated."""
    root = Path(directory)
    config_file = root / CONFIG_NAME
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {str(root)!r} does not exist")
    if not config_file.is_file():
        raise CheckpointError(
            f"{config_file} is missing: not an oodpl checkpoint (for a plain transformers "
            "checkpoint use RewardModel.from_pretrained / Policy.from_pretrained)"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file}: invalid JSON ({error})") from error
    if config.get("format") != FORMAT or config.get("kind") not in KINDS:
        raise CheckpointError(f"{config_file}: not an oodpl checkpoint config (format/kind)")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_file}: format_version {config.get('format_version')!r} is not supported "
            f"(this oodpl-models reads version {FORMAT_VERSION})"
        )
    return config


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    trainable: bool = True,
) -> LoadedCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``kind`` must match)."""
    root = Path(directory)
    config = read_checkpoint_config(root)
    if config["kind"] != kind:
        raise CheckpointError(
            f"{root / CONFIG_NAME}: holds a {config['kind']!r}, expected a {kind!r}"
        )
    if dtype is None:
        dtype = getattr(torch, config.get("dtype", "float32"))
    lm = load_language_model(
        root,
        dtype=dtype,
        attn_implementation=attn_implementation or config.get("attn_implementation") or "sdpa",
    )
    lora = LoraSpec.from_dict(config["lora"]) if config.get("lora") else None
    model: nn.Module = lm
    if lora is not None:
        adapter = root / (config.get("adapter_dir") or ADAPTER_DIR)
        if not (adapter / "adapter_config.json").is_file():
            raise CheckpointError(f"{adapter / 'adapter_config.json'} is missing (LoRA checkpoint)")
        with intended_untying():
            model = PeftModel.from_pretrained(lm, adapter, is_trainable=trainable)
    tensors = {}
    for name, file_name in (config.get("tensors") or {}).items():
        path = root / file_name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {CONFIG_NAME})")
        tensors[name] = load_file(path)
    return LoadedCheckpoint(model, load_tokenizer(root), lora, config, tensors)


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """A merged copy of a peft-wrapped LM (``W + scale·BA``; trained LM-head copy kept)."""
    if not isinstance(model, PeftModel):
        return copy.deepcopy(unwrap(model))
    with intended_untying():
        merged = copy.deepcopy(model).merge_and_unload()
    _untie_if_diverged(merged)
    return merged


def merge_and_save(wrapper: Any, directory: str | os.PathLike[str]) -> Path:
    """Save ``wrapper.merged()`` (a RewardModel or Policy without LoRA) as a full checkpoint."""
    return wrapper.merged().save_pretrained(directory)


def load(directory: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Load whatever oodpl checkpoint ``directory`` holds (RewardModel or Policy)."""
    kind = read_checkpoint_config(directory)["kind"]
    if kind == "reward_model":
        from oodpl.models.reward_model import RewardModel

        return RewardModel.load(directory, **kwargs)
    from oodpl.models.policy import Policy

    return Policy.load(directory, **kwargs)
