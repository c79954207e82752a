"""Load real checkpoints offline: a local directory, a ``.gguf`` file, or the local HF cache.

Nothing here downloads: a hub id is looked up in the Hugging Face cache with
``local_files_only=True``, and a hub id that is not cached raises
:class:`~oodpl.models.errors.ModelNotCachedError` saying so. ``trust_remote_code`` is False unless
the caller asks. GGUF checkpoints (``gguf_file=`` or a path ending in ``.gguf``) are dequantised by
``transformers`` (needs the ``gguf`` package: ``pip install oodpl-models[gguf]``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from oodpl.models.errors import CheckpointError, ModelNotCachedError, UnknownArchitectureError
from oodpl.models.presets import (
    _unknown_architecture,
    check_attn_implementation,
    family_of_config,
    known_model_types,
)


@dataclass(frozen=True)
class ModelSource:
    """Where a checkpoint lives: a local directory, plus the GGUF file inside it if any."""

    directory: Path
    gguf_file: str | None = None
    hub_id: str | None = None


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a filesystem path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_source(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelSource:
    """Resolve a directory, a ``.gguf`` path or a cached hub id to a local :class:`ModelSource`."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(
                f"name_or_path {str(path)!r} is a file; pass its directory, or a .gguf file"
            )
        if gguf_file is not None and gguf_file != path.name:
            raise ValueError(f"gguf_file {gguf_file!r} conflicts with name_or_path {str(path)!r}")
        return ModelSource(path.parent, path.name)
    if path.is_dir():
        source = ModelSource(path, gguf_file)
    else:
        name = str(name_or_path)
        if _looks_like_path(name) or path.suffix == ".gguf":
            raise FileNotFoundError(f"name_or_path {name!r}: no such file or directory")
        source = _cached_snapshot(name, revision=revision, cache_dir=cache_dir, gguf_file=gguf_file)
    if source.gguf_file is not None and not (source.directory / source.gguf_file).is_file():
        raise FileNotFoundError(f"gguf_file {source.gguf_file!r} not found in {source.directory}")
    return source


def _cached_snapshot(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    gguf_file: str | None,
) -> ModelSource:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        directory = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except HFValidationError as error:
        raise FileNotFoundError(
            f"name_or_path {repo_id!r} is not a local directory and not a valid hub id ({error})"
        ) from None
    except Exception as error:  # LocalEntryNotFoundError and relatives: not in the cache
        raise ModelNotCachedError(
            f"model {repo_id!r} is not a local directory and is not in the Hugging Face cache "
            f"({cache}); oodpl works offline and cannot download it. Download it beforehand "
            f"(e.g. `hf download {repo_id}`) or pass a local directory."
        ) from error
    return ModelSource(Path(directory), gguf_file, hub_id=repo_id)


def _raw_model_type(directory: Path) -> str | None:
    config_file = directory / "config.json"
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_file}: not a readable JSON config ({error})") from error


def load_config(source: ModelSource, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The checkpoint's config; clear errors for a missing config or an unknown architecture."""
    if source.gguf_file is None:
        model_type = _raw_model_type(source.directory)
        if model_type is None:
            raise CheckpointError(
                f"{source.directory} has no config.json (not a transformers checkpoint; pass "
                "gguf_file= for a GGUF checkpoint)"
            )
        if model_type not in known_model_types() and not trust_remote_code:
            raise _unknown_architecture(
                f"model_type in {source.directory / 'config.json'}", model_type
            )
    try:
        return AutoConfig.from_pretrained(
            source.directory,
            gguf_file=source.gguf_file,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
    except ValueError as error:
        where = source.directory / (source.gguf_file or "config.json")
        raise UnknownArchitectureError(f"{where}: cannot load the model config: {error}") from error


def load_language_model(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """A causal or seq2seq LM (chosen from its config) loaded offline, in eval mode."""
    check_attn_implementation(attn_implementation)
    source = resolve_source(
        name_or_path, gguf_file=gguf_file, revision=revision, cache_dir=cache_dir
    )
    config = load_config(source, trust_remote_code=trust_remote_code)
    auto = AutoModelForSeq2SeqLM if family_of_config(config) == "seq2seq" else AutoModelForCausalLM
    if source.gguf_file is not None:
        from transformers import GgufConfig

        kwargs.setdefault("quantization_config", GgufConfig(dequantize=True))
    model = auto.from_pretrained(
        source.directory,
        gguf_file=source.gguf_file,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        **kwargs,
    )
    if source.gguf_file is not None:
        _drop_gguf_quantizer(model, source.directory / source.gguf_file)
    model.eval()
    return model


def _drop_gguf_quantizer(model: PreTrainedModel, gguf_path: Path) -> None:
    """A de-quantised GGUF model holds plain float weights; forget the GGUF quantizer so that it
    trains and saves (as safetensors) like any other model."""
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    weights = [p for p in model.parameters() if not p.is_floating_point()]
    if packed or weights:
        raise CheckpointError(
            f"{gguf_path}: weights stayed GGUF-packed ({packed[:3]}...); oodpl needs de-quantised "
            "weights (GgufConfig(dequantize=True))"
        )
    model.hf_quantizer = None
    for attribute in ("is_quantized", "quantization_method"):
        if attribute in vars(model):
            delattr(model, attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, loaded offline."""
    source = resolve_source(
        name_or_path, gguf_file=gguf_file, revision=revision, cache_dir=cache_dir
    )
    try:
        return AutoTokenizer.from_pretrained(
            source.directory,
            gguf_file=source.gguf_file,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{source.directory}: cannot load a tokenizer: {error}") from error
