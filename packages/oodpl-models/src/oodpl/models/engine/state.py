"""Resumable training state on disk: tensors in safetensors, everything else in JSON (no pickle).

Layout of a state directory written by an engine's ``save_state``::

    engine.json                 format tag, backend, global_step, world_size, EngineConfig
    extra.json                  the caller's JSON dict (the training loop's data position)
    rng/rank-00000.{safetensors,json}   python / numpy / torch (/ CUDA) RNG states, one per rank
    model.safetensors           torch backend: module weights (``safetensors.torch.save_model``)
    optimizer.{safetensors,json}        torch backend: the optimizer ``state_dict`` flattened
    scheduler.json              torch backend: the LR scheduler ``state_dict``
    grad_scaler.json            torch backend with fp16: the ``GradScaler`` state
    deepspeed/                  deepspeed backend: DeepSpeed's own ``save_checkpoint`` output

The DeepSpeed backend stores its model, optimizer partitions and scheduler through DeepSpeed's
``save_checkpoint`` / ``load_checkpoint``, which use ``torch.save`` (pickle) internally; that is the
one place pickle is involved, and such files should only be loaded from trusted sources.

An optimizer ``state_dict`` ``{"state": {i: {name: value}}, "param_groups": [...]}`` is flattened
to tensors named ``state/<i>/<name>`` plus a JSON description of everything else (non-tensor
state values and the parameter groups; tuples are tagged so they round-trip exactly). Floats are
written by ``json`` with ``repr`` precision, so the round trip is bit-exact.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

STATE_FORMAT = "oodpl-engine-state"
STATE_VERSION = 1


class EngineStateError(ValueError):
    """A state directory that is missing a file or does not match the engine loading it."""


# --- JSON with exact tuples -----------------------------------------------------------------


def _encode(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"JSON state keys must be strings, got {bad[:3]!r}")
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        raise TypeError("tensors cannot be written to the JSON part of a state")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v) for v in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` (tuples tagged) as JSON; ``TypeError`` naming the file on bad values."""
    try:
        text = json.dumps(_encode(data), indent=1, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"{path.name}: {err}") from None
    path.write_text(text + "\n")


def read_json(path: Path) -> Any:
    """Read a file written by :func:`write_json`; ``EngineStateError`` naming it on failure."""
    if not path.is_file():
        raise EngineStateError(f"training state file is missing: {path}")
    try:
        return _decode(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise EngineStateError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Save named tensors (detached, contiguous, on CPU) to a safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file to CPU; ``EngineStateError`` naming it when missing."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise EngineStateError(f"training state file is missing: {path}")
    return load_file(str(path), device="cpu")


# --- optimizer ----------------------------------------------------------------------------


def flatten_optimizer_state(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into ``(tensors, json_meta)`` without pickle."""
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        entry: dict[str, Any] = {}
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                key = f"state/{param_id}/{name}"
                tensors[key] = value
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": value}
        meta_state[str(param_id)] = entry
    meta = {"state": meta_state, "param_groups": list(state_dict["param_groups"])}
    return tensors, meta


def unflatten_optimizer_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for param_id, entry in meta["state"].items():
        values: dict[str, Any] = {}
        for name, spec in entry.items():
            if "tensor" in spec:
                if spec["tensor"] not in tensors:
                    raise EngineStateError(f"optimizer tensor {spec['tensor']!r} is missing")
                values[name] = tensors[spec["tensor"]]
            else:
                values[name] = spec["value"]
        state[int(param_id)] = values
    return {"state": state, "param_groups": [dict(g) for g in meta["param_groups"]]}


def save_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.safetensors`` + ``optimizer.json`` in ``directory``."""
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    write_tensors(directory / "optimizer.safetensors", tensors)
    write_json(directory / "optimizer.json", meta)


def load_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore an optimizer written by :func:`save_optimizer` (tensors moved to its params)."""
    meta = read_json(directory / "optimizer.json")
    tensors = read_tensors(directory / "optimizer.safetensors")
    saved_groups = meta["param_groups"]
    live_groups = optimizer.param_groups
    if len(saved_groups) != len(live_groups) or any(
        len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, live_groups, strict=True)
    ):
        raise EngineStateError(
            f"{directory / 'optimizer.json'}: parameter groups of sizes "
            f"{[len(s['params']) for s in saved_groups]} do not match the model's "
            f"{[len(g['params']) for g in live_groups]} (different model or trainable set?)"
        )
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta))


# --- random number generators -----------------------------------------------------------


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """States of python ``random``, numpy (when installed), torch CPU and CUDA generators."""
    version, internal, gauss = random.getstate()
    meta: dict[str, Any] = {"python": {"version": version, "gauss_next": gauss}}
    tensors: dict[str, torch.Tensor] = {
        "python": torch.tensor(internal, dtype=torch.int64),
        "torch": torch.get_rng_state(),
    }
    try:
        import numpy as np
    except ImportError:  # numpy is optional here
        np = None
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
        meta["numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss)}
        meta["numpy"]["cached_gaussian"] = float(cached)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = s
        meta["cuda_devices"] = torch.cuda.device_count()
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = meta["python"]
    internal = tuple(int(v) for v in tensors["python"].tolist())
    random.setstate((py["version"], internal, py["gauss_next"]))
    torch.set_rng_state(tensors["torch"])
    if "numpy" in meta and "numpy" in tensors:
        import numpy as np

        npm = meta["numpy"]
        keys = tensors["numpy"].numpy().astype(np.uint32)
        np.random.set_state(
            (npm["kind"], keys, npm["pos"], npm["has_gauss"], npm["cached_gaussian"])
        )
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda/")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def rng_path(directory: Path, rank: int) -> Path:
    """``rng/rank-XXXXX`` (without suffix) inside a state directory."""
    return directory / "rng" / f"rank-{rank:05d}"


def save_rng(directory: Path, rank: int) -> None:
    """Write this process's RNG states to ``rng/rank-<rank>.{safetensors,json}``."""
    base = rng_path(directory, rank)
    base.parent.mkdir(parents=True, exist_ok=True)
    tensors, meta = capture_rng_state()
    write_tensors(base.with_suffix(".safetensors"), tensors)
    write_json(base.with_suffix(".json"), meta)


def load_rng(directory: Path, rank: int, saved_world_size: int) -> None:
    """Restore the RNG states of ``rank`` (of ``rank % saved_world_size`` if the size changed)."""
    base = rng_path(directory, rank % max(1, saved_world_size))
    restore_rng_state(
        read_tensors(base.with_suffix(".safetensors")), read_json(base.with_suffix(".json"))
    )


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy (when installed) and torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


# --- engine metadata and the caller's extra -----------------------------------------------


@dataclass(frozen=True)
class EngineMeta:
    """Contents of ``engine.json``."""

    backend: str
    global_step: int
    world_size: int
    config: dict[str, Any]
    format: str = STATE_FORMAT
    version: int = STATE_VERSION


def write_engine_meta(directory: Path, meta: EngineMeta, extra: Mapping[str, Any] | None) -> None:
    """Write ``engine.json`` and ``extra.json``; ``TypeError`` if ``extra`` is not JSON-ready."""
    write_json(directory / "extra.json", dict(extra or {}))
    write_json(directory / "engine.json", asdict(meta))


def read_engine_meta(directory: Path, *, backend: str) -> tuple[EngineMeta, dict[str, Any]]:
    """Read and check ``engine.json`` (format, version, backend) and ``extra.json``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EngineStateError(f"training state directory does not exist: {directory}")
    raw = read_json(directory / "engine.json")
    if raw.get("format") != STATE_FORMAT or raw.get("version") != STATE_VERSION:
        raise EngineStateError(
            f"{directory / 'engine.json'}: not an oodpl engine state of version {STATE_VERSION}"
        )
    meta = EngineMeta(**raw)
    if meta.backend != backend:
        raise EngineStateError(
            f"{directory / 'engine.json'}: state was written by backend={meta.backend!r}, "
            f"cannot load it into backend={backend!r}"
        )
    return meta, read_json(directory / "extra.json")


# --- atomic directories --------------------------------------------------------------------


def begin_staging(final: Path, *, is_main: bool, barrier: Callable[[], None]) -> Path:
    """Create (on the main rank) the staging directory ``<final>.partial``; collective."""
    staging = final.with_name(final.name + ".partial")
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    return staging


def commit_staging(
    staging: Path, final: Path, *, is_main: bool, barrier: Callable[[], None]
) -> Path:
    """Move a complete staging directory into place (replacing ``final``); collective.

    A state directory therefore either exists complete or not at all: a process killed while
    saving leaves only ``<final>.partial`` behind, which is never read.
    """
    barrier()
    if is_main:
        if final.exists():
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
    barrier()
    return final
