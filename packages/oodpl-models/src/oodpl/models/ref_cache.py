"""DPO reference log-probs computed once and cached on disk (safetensors), reused across runs.

``log π_ref(y_w | x)`` and ``log π_ref(y_l | x)`` (summed over response tokens, METHODS §2) of every
training pair are fixed for a run, so they are computed once in eval mode without gradients and
stored in ``<cache_dir>/ref_logps-<key>.safetensors``, where ``key`` is the SHA-256 of::

    model      digest of the reference's weights (every tensor of its state dict: names, dtypes,
               shapes, bytes; LoRA adapters and heads included) + its config JSON
               (or a caller-supplied digest, e.g. :func:`checkpoint_digest` of a checkpoint dir)
    data       digest of the records, in order (prompt, chosen, rejected)
    tokenizer  digest of the tokenizer (fast tokenizer JSON or vocab, special tokens)
    collator   settings that change the tokens: family, max_length, max_prompt_length,
               max_response_length, truncation_side, append_eos, add_bos, pad / decoder start id
    path       "padded" or "packed" (the forward used; results agree to ~1e-6, kept apart anyway)

Padding side and ``pad_to_multiple_of`` are not part of the key: they do not change any token.
Any change of model, data, tokenizer or collator gives a new key, so a stale file is never read.
Later epochs and runs with the same inputs read the file and run no forward at all; with
``reference`` given as a zero-argument callable (e.g. ``lambda: Policy.load(dir)``) and
``model_digest=checkpoint_digest(dir)``, a cache hit never even loads the reference model.

Files are written atomically (temporary file + ``os.replace``), safetensors only (no pickle). A
file that exists but cannot be read or fails validation (header, tensor names, lengths, key,
non-finite values) is *corrupt*: by default (``on_corrupt="error"``) :class:`ReferenceCacheError`
(a ``ValueError``) names the file and says to delete it; ``on_corrupt="recompute"`` warns, naming
the file, recomputes and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from oodpl.models.collate import PreferenceCollator
from oodpl.models.packed_forward import packed_preference_logps
from oodpl.models.packing import pack_tokenized
from oodpl.models.shared_prefix import pack_shared_prefix, packed_layout
from oodpl.models.shared_prefix_forward import shared_prefix_preference_logps

FORMAT_VERSION = "1"
TENSOR_NAMES = ("chosen_logps", "chosen_n_tokens", "rejected_logps", "rejected_n_tokens")
COLLATOR_KEY_FIELDS = (
    "family",
    "max_length",
    "max_prompt_length",
    "max_response_length",
    "truncation_side",
    "append_eos",
    "add_bos",
    "pad_token_id",
    "decoder_start_token_id",
)
OnCorrupt = Literal["error", "recompute"]


class ReferenceCacheError(ValueError):
    """A cache file exists but is unreadable or invalid (the message names the file)."""


@dataclass(frozen=True)
class ReferenceLogps:
    """Reference log-probs of B pairs (``[B]`` each, record order), where they came from."""

    chosen_logps: torch.Tensor
    chosen_n_tokens: torch.Tensor
    rejected_logps: torch.Tensor
    rejected_n_tokens: torch.Tensor
    key: str
    path: Path
    hit: bool


# -- digests -------------------------------------------------------------------------------------
def _update_tensor(h: Any, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    h.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(data.view(torch.uint8).numpy().tobytes())


def model_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor in ``model.state_dict()`` (sorted by name) and the LM config."""
    h = hashlib.sha256(b"oodpl-model-v1|")
    for name, tensor in sorted(model.state_dict().items()):
        _update_tensor(h, name, tensor)
    lm = getattr(model, "lm", None)
    config = getattr(lm, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    return h.hexdigest()


def checkpoint_digest(directory: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint directory's files (names + bytes), without loading the model."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"checkpoint directory {root} does not exist")
    h = hashlib.sha256(b"oodpl-checkpoint-v1|")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"|")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _field(record: Any, name: str, index: int) -> str:
    value = record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
    if not isinstance(value, str):
        raise ValueError(f"records[{index}].{name} must be a str, got {type(value).__name__}")
    return value


def records_digest(records: Sequence[Any]) -> str:
    """SHA-256 of the (prompt, chosen, rejected) triples, in order."""
    h = hashlib.sha256(b"oodpl-records-v1|")
    for index, record in enumerate(records):
        triple = [_field(record, k, index) for k in ("prompt", "chosen", "rejected")]
        h.update(json.dumps(triple, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the tokenizer's definition (fast-tokenizer JSON, else vocab) + special tokens."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer)}")
    h = hashlib.sha256(b"oodpl-tokenizer-v1|")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    h.update(json.dumps(special, sort_keys=True).encode())
    return h.hexdigest()


def collator_settings(collator: PreferenceCollator) -> dict[str, Any]:
    """The collator settings that change tokens (module docstring)."""
    return {name: getattr(collator, name, None) for name in COLLATOR_KEY_FIELDS}


def cache_key(
    *, model: str, data: str, tokenizer: str, collator: Mapping[str, Any], path: str
) -> str:
    """SHA-256 of the key parts (module docstring)."""
    parts = {
        "version": FORMAT_VERSION,
        "model": model,
        "data": data,
        "tokenizer": tokenizer,
        "collator": dict(collator),
        "path": path,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# -- file I/O -----------------------------------------------------------------------------------
def cache_file(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(cache_dir) / f"ref_logps-{key[:40]}.safetensors"


def _read(path: Path, key: str, n_records: int) -> dict[str, torch.Tensor]:
    """Load and validate a cache file; ReferenceCacheError naming ``path`` on any problem."""
    hint = f"; delete {path} to recompute (or pass on_corrupt='recompute')"
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ReferenceCacheError(f"reference cache {path} is unreadable: {error}{hint}") from error
    if metadata.get("key") != key or metadata.get("format_version") != FORMAT_VERSION:
        raise ReferenceCacheError(f"reference cache {path} was written for another key{hint}")
    missing = [name for name in TENSOR_NAMES if name not in tensors]
    if missing:
        raise ReferenceCacheError(f"reference cache {path} lacks tensors {missing}{hint}")
    for name in TENSOR_NAMES:
        value = tensors[name]
        if value.shape != (n_records,):
            raise ReferenceCacheError(
                f"reference cache {path}: {name} has shape {tuple(value.shape)}, expected "
                f"({n_records},){hint}"
            )
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise ReferenceCacheError(f"reference cache {path}: {name} is not finite{hint}")
    return tensors


def _write(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            temporary,
            metadata=dict(metadata),
        )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# -- compute ------------------------------------------------------------------------------------
@torch.no_grad()
def compute_reference_logps(
    reference: nn.Module,
    records: Sequence[Any],
    collator: PreferenceCollator,
    *,
    batch_size: int = 32,
    packed: bool = False,
    chunk_size: int = 512,
) -> dict[str, torch.Tensor]:
    """``{chosen_logps, chosen_n_tokens, rejected_logps, rejected_n_tokens}`` (``[B]``, CPU) in
    eval mode; ``packed`` runs the padding-free forward with LM-head chunks of ``chunk_size``
    (prefix-shared layout where the model supports it, :mod:`oodpl.models.shared_prefix`; else
    separate sequences, :func:`~oodpl.models.packed_forward.packed_preference_logps`)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not packed:
        batches = (
            collator(list(records[i : i + batch_size])) for i in range(0, len(records), batch_size)
        )
        return reference.compute_logps(batches)
    if packed_layout(reference) == "shared_prefix":  # the prompt run once per pair
        pack, forward = pack_shared_prefix, shared_prefix_preference_logps
    else:
        pack, forward = pack_tokenized, packed_preference_logps
    items = collator.tokenize(records)
    was_training = reference.training
    reference.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        for start in range(0, len(items), batch_size):
            batch = pack(items[start : start + batch_size])
            out = forward(reference, batch, chunk_size=chunk_size)
            parts.append(tuple(t.cpu() for t in out))
    finally:
        reference.train(was_training)
    return {name: torch.cat([p[i] for p in parts]) for i, name in enumerate(TENSOR_NAMES)}


def cached_reference_logps(
    reference: nn.Module | Callable[[], nn.Module],
    records: Sequence[Any],
    *,
    cache_dir: str | os.PathLike[str],
    collator: PreferenceCollator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_digest_override: str | None = None,
    batch_size: int = 32,
    packed: bool = False,
    chunk_size: int = 512,
    on_corrupt: OnCorrupt = "error",
) -> ReferenceLogps:
    """Reference log-probs of ``records`` from ``cache_dir`` or computed once and stored there.

    Args:
        reference: the frozen reference :class:`~oodpl.models.policy.Policy`, or a zero-argument
            callable returning it (called only on a cache miss; then ``model_digest_override``,
            ``tokenizer`` and ``collator`` are required so the key needs no model).
        records: Preference records (or mappings with prompt / chosen / rejected).
        collator: default ``reference.preference_collator()``.
        tokenizer: default ``collator.tokenizer``.
        model_digest_override: a digest standing for the model (e.g. :func:`checkpoint_digest`);
            default :func:`model_digest` of ``reference``.
        packed: compute with the packed (padding-free) forward; causal LMs only.
        on_corrupt: ``"error"`` (default) or ``"recompute"`` (module docstring).
    """
    if on_corrupt not in ("error", "recompute"):
        raise ValueError(f"on_corrupt must be 'error' or 'recompute', got {on_corrupt!r}")
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence) or not records:
        raise ValueError("records must be a non-empty sequence of preference records")
    lazy = not isinstance(reference, nn.Module)
    if lazy and not callable(reference):
        raise TypeError(f"reference must be a Policy or a callable, got {type(reference)}")
    if lazy and (model_digest_override is None or collator is None):
        raise ValueError(
            "reference is a callable: pass model_digest_override and collator so the cache key "
            "can be built without loading the model"
        )
    model: nn.Module | None = None if lazy else reference  # type: ignore[assignment]
    if collator is None:
        collator = model.preference_collator()  # type: ignore[union-attr]
    if not isinstance(collator, PreferenceCollator):
        raise TypeError(f"collator must be a PreferenceCollator, got {type(collator).__name__}")
    tokenizer = tokenizer if tokenizer is not None else collator.tokenizer
    key = cache_key(
        model=model_digest_override or model_digest(model),  # type: ignore[arg-type]
        data=records_digest(records),
        tokenizer=tokenizer_digest(tokenizer),
        collator=collator_settings(collator),
        path="packed" if packed else "padded",
    )
    path = cache_file(cache_dir, key)
    if path.exists():
        try:
            tensors = _read(path, key, len(records))
            return ReferenceLogps(
                **{n: tensors[n] for n in TENSOR_NAMES}, key=key, path=path, hit=True
            )
        except ReferenceCacheError as error:
            if on_corrupt == "error":
                raise
            warnings.warn(f"{error}; recomputing", UserWarning, stacklevel=2)
    if model is None:
        model = reference()  # type: ignore[operator]
    tensors = compute_reference_logps(
        model, records, collator, batch_size=batch_size, packed=packed, chunk_size=chunk_size
    )
    for name in ("chosen_logps", "rejected_logps"):
        if not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(f"reference {name} are not finite; nothing cached")
    _write(
        path,
        tensors,
        {"key": key, "format_version": FORMAT_VERSION, "n_records": str(len(records))},
    )
    return ReferenceLogps(**{n: tensors[n] for n in TENSOR_NAMES}, key=key, path=path, hit=False)


__all__ = [
    "ReferenceCacheError",
    "ReferenceLogps",
    "cache_file",
    "cache_key",
    "cached_reference_logps",
    "checkpoint_digest",
    "collator_settings",
    "compute_reference_logps",
    "model_digest",
    "records_digest",
    "tokenizer_digest",
]
