"""Checkpoints of the OODPL meta-trainer (:func:`oodpl.models.trainers.meta.train_meta`).

Every ``checkpoint_every`` outer steps (and after the last one) the meta-trainer writes
``<checkpoint_dir>/step-XXXXXXXX/`` (the step count after that outer step, as the engine loop's
:func:`~oodpl.models.engine.loop.checkpoint_name`) and points ``<checkpoint_dir>/latest`` at it::

    phi.safetensors                the selected reward parameters φ (names as in the reward
                                   model's ``trainable_parameters()``)
    optimizer.{safetensors,json}   the outer optimiser's state (:func:`~.state.save_optimizer`)
    meta_state.json                format tag, step, the fingerprint of the run and the held-out
                                   evaluations so far

Safetensors and JSON only (no pickle). A state is written into ``step-XXXXXXXX.partial`` and
renamed into place when complete (:func:`~.state.begin_staging` / :func:`~.state.commit_staging`),
then ``latest`` is replaced atomically; a failing write removes its staging directory and leaves
the earlier checkpoints and ``latest`` as they were. ``keep_last`` prunes older states.

Resuming checks the fingerprint: everything that decides the computation from the checkpoint on
(method and its options, ``K``, ``α``, batch sizes, ``β``/weighting, seed, domains per step,
outer optimiser and its step size, which reward parameters, the domains with their record counts,
φ's names, shapes and dtypes) must equal the saved values; ``steps`` may differ (a run can be
extended). The policy ``θ_init`` is not saved: the caller passes the same SFT policy again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oodpl.core.bilevel import MetaResume
from oodpl.models.engine.loop import (
    LATEST_FILE,
    check_checkpointing,
    checkpoint_name,
    point_latest,
)
from oodpl.models.engine.state import (
    EngineStateError,
    begin_staging,
    commit_staging,
    read_json,
    read_tensors,
    save_optimizer,
    unflatten_optimizer_state,
    write_json,
    write_tensors,
)

META_STATE_FILE = "meta_state.json"
PHI_FILE = "phi.safetensors"
META_STATE_FORMAT = "oodpl-meta-state"
META_STATE_VERSION = 1
FINGERPRINT_FIELDS = (
    "method",
    "method_options",
    "inner_steps",
    "inner_lr",
    "support_batch_size",
    "query_batch_size",
    "beta",
    "weighting",
    "max_weight",
    "seed",
    "domains_per_step",
    "outer_optimizer",
    "outer_lr",
    "max_grad_norm",
    "reward_parameters",
)
ITEM_LABELS = {
    "domains": "(name, fine-tuning records, preferences)",
    "phi": "(name, shape, dtype)",
}

Params = dict[str, torch.Tensor]


def _plain(value: Any) -> Any:
    """Tuples as lists, mappings as dicts: the form a fingerprint is compared in."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def meta_fingerprint(
    config: Any, domain_sizes: Mapping[str, tuple[int, int]], phi: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """What a resumed run must share with the saved one (see the module docstring).

    ``domain_sizes[name] = (fine-tuning records, preference records)``, in the domains' order.
    """
    out = {name: _plain(getattr(config, name)) for name in FINGERPRINT_FIELDS}
    out["domains"] = [[name, int(ft), int(pref)] for name, (ft, pref) in domain_sizes.items()]
    out["phi"] = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in phi.items()]
    return out


def check_fingerprint(saved: Any, now: Mapping[str, Any], where: Path) -> None:
    """``ValueError`` naming the first field of ``now`` whose saved value differs."""
    if not isinstance(saved, Mapping):
        raise EngineStateError(f"{where}: the field 'fingerprint' is missing or not a mapping")
    for name, value in now.items():
        if name not in saved:
            raise EngineStateError(f"{where}: the fingerprint lacks the field {name!r}")
        old = _plain(saved[name])
        if old == value:
            continue
        if name in ITEM_LABELS and isinstance(old, list):
            for index in range(max(len(old), len(value))):
                a = old[index] if index < len(old) else None
                b = value[index] if index < len(value) else None
                if a != b:
                    raise ValueError(
                        f"{where}: cannot resume, {name}[{index}] {ITEM_LABELS[name]} was {a!r} "
                        f"and is now {b!r}"
                    )
        raise ValueError(f"{where}: cannot resume, {name} was {old!r} and is now {value!r}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_tensors(path)
    except EngineStateError:
        raise
    except Exception as err:  # safetensors raises its own error types on a corrupt file
        raise EngineStateError(f"{path}: not a readable safetensors file ({err})") from None


def resolve_meta_checkpoint(path: str | Path) -> Path:
    """A meta state directory, or the one named by ``<path>/latest`` for a checkpoint root."""
    path = Path(path)
    if (path / META_STATE_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        target = path / latest.read_text().strip()
        if (target / META_STATE_FILE).is_file():
            return target
        raise EngineStateError(
            f"{latest} points to {target}, which holds no {META_STATE_FILE} (not a meta-training "
            "checkpoint, or it was removed)"
        )
    raise EngineStateError(
        f"resume_from={str(path)!r} is neither a meta-training checkpoint (no {META_STATE_FILE}) "
        f"nor a checkpoint root with a {LATEST_FILE} file"
    )


def _read_state(state_dir: Path) -> dict[str, Any]:
    where = state_dir / META_STATE_FILE
    state = read_json(where)
    if not isinstance(state, dict) or state.get("format") != META_STATE_FORMAT:
        raise EngineStateError(f"{where}: not an oodpl meta-training state")
    if state.get("version") != META_STATE_VERSION:
        raise EngineStateError(f"{where}: version {state.get('version')!r} is not supported")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise EngineStateError(f"{where}: the field 'step' must be an int >= 0, got {step!r}")
    return state


def meta_checkpoint_step(path: str | Path) -> int:
    """The outer step of a meta state directory (or of the one a root's ``latest`` names)."""
    return int(_read_state(resolve_meta_checkpoint(path))["step"])


@dataclass(frozen=True)
class MetaCheckpoint:
    """A loaded meta state: where it is, after which outer step, and its contents."""

    path: Path
    step: int
    phi: Params
    optimizer_state: dict[str, Any]
    held_out: list[dict[str, Any]] = field(default_factory=list)


def load_meta_checkpoint(path: str | Path, fingerprint: Mapping[str, Any]) -> MetaCheckpoint:
    """Read and check a meta state (``EngineStateError`` naming a missing or corrupt file,
    ``ValueError`` naming the first fingerprint field that differs)."""
    state_dir = resolve_meta_checkpoint(path)
    state = _read_state(state_dir)
    check_fingerprint(state.get("fingerprint"), fingerprint, state_dir / META_STATE_FILE)
    phi = _read_tensors(state_dir / PHI_FILE)
    names = [entry[0] for entry in fingerprint["phi"]]
    if sorted(phi) != sorted(names):
        raise EngineStateError(
            f"{state_dir / PHI_FILE}: holds the tensors {sorted(phi)}, expected {sorted(names)}"
        )
    for name, shape, _ in fingerprint["phi"]:
        if list(phi[name].shape) != shape:
            raise EngineStateError(
                f"{state_dir / PHI_FILE}: {name} has shape {list(phi[name].shape)}, "
                f"expected {shape}"
            )
    optimizer_json = state_dir / "optimizer.json"
    meta = read_json(optimizer_json)
    tensors = _read_tensors(state_dir / "optimizer.safetensors")
    try:
        optimizer_state = unflatten_optimizer_state(tensors, meta)
        count = sum(len(group["params"]) for group in optimizer_state["param_groups"])
    except (KeyError, TypeError, AttributeError) as err:
        raise EngineStateError(f"{optimizer_json}: not an optimizer state ({err!r})") from None
    if count != len(names):
        raise EngineStateError(
            f"{optimizer_json}: the optimizer state covers {count} tensors, phi has {len(names)}"
        )
    held_out = state.get("held_out", [])
    return MetaCheckpoint(state_dir, state["step"], phi, optimizer_state, list(held_out))


def _no_barrier() -> None:
    return None


def save_meta_checkpoint(
    root: str | Path,
    *,
    step: int,
    phi: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    fingerprint: Mapping[str, Any],
    held_out: Sequence[Mapping[str, Any]] = (),
    keep_last: int | None = None,
) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically, point ``root/latest`` at it, prune to
    ``keep_last`` states; returns the state directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = begin_staging(final, is_main=True, barrier=_no_barrier)
    try:
        write_tensors(staging / PHI_FILE, phi)
        save_optimizer(staging, optimizer)
        state = {
            "format": META_STATE_FORMAT,
            "version": META_STATE_VERSION,
            "step": step,
            "fingerprint": dict(fingerprint),
            "held_out": [dict(entry) for entry in held_out],
        }
        write_json(staging / META_STATE_FILE, state)  # last: a complete state has it
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_staging(staging, final, is_main=True, barrier=_no_barrier)
    point_latest(root, final.name, keep_last=keep_last)
    return final


class MetaCheckpoints:
    """The checkpoint/resume side of :func:`~oodpl.models.trainers.meta.train_meta`.

    Built with the run's fingerprint; :meth:`restore` loads a state into ``phi`` (in place) and
    returns the :class:`~oodpl.core.bilevel.MetaResume` for the core loop; :meth:`optimizer`
    wraps the outer optimiser factory so the optimiser can be saved; :meth:`after_step` writes a
    state when one is due.
    """

    def __init__(
        self,
        fingerprint: Mapping[str, Any],
        steps: int,
        *,
        checkpoint_dir: str | Path | None,
        checkpoint_every: int,
        keep_last: int | None,
    ) -> None:
        check_checkpointing(checkpoint_every, keep_last)
        self.fingerprint = dict(fingerprint)
        self.steps = steps
        self.root = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.every = checkpoint_every
        self.keep_last = keep_last
        self.live: torch.optim.Optimizer | None = None
        self.last_checkpoint: Path | None = None

    def restore(
        self, resume_from: str | Path | None, phi: Params, held_out: list[dict[str, Any]] | None
    ) -> MetaResume | None:
        """Load ``resume_from`` into ``phi`` in place (and its held-out evaluations into
        ``held_out`` when given); ``None`` for a fresh run."""
        if resume_from is None:
            return None
        saved = load_meta_checkpoint(resume_from, self.fingerprint)
        if saved.step > self.steps:
            raise ValueError(
                f"{saved.path}: the checkpoint is at outer step {saved.step}, past the run's "
                f"steps={self.steps}"
            )
        with torch.no_grad():
            for name, tensor in phi.items():
                tensor.copy_(saved.phi[name])
        if held_out is not None:
            held_out.extend(saved.held_out)
        return MetaResume(saved.step, saved.optimizer_state)

    def optimizer(
        self, factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    ) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
        """``factory`` that also keeps the optimiser it builds (to save its state)."""

        def build(params: list[torch.Tensor]) -> torch.optim.Optimizer:
            self.live = factory(params)
            return self.live

        return build

    def after_step(self, step: int, phi: Params, held_out: Sequence[Mapping[str, Any]]) -> None:
        """Save after outer step ``step`` (1-based count) every ``checkpoint_every`` steps and at
        the last one."""
        if self.root is None:
            return
        if not ((self.every and step % self.every == 0) or step == self.steps):
            return
        if self.live is None:
            raise RuntimeError("the outer optimizer was not built through MetaCheckpoints")
        self.last_checkpoint = save_meta_checkpoint(
            self.root,
            step=step,
            phi=phi,
            optimizer=self.live,
            fingerprint=self.fingerprint,
            held_out=held_out,
            keep_last=self.keep_last,
        )


__all__ = [
    "META_STATE_FILE",
    "PHI_FILE",
    "MetaCheckpoint",
    "MetaCheckpoints",
    "check_fingerprint",
    "load_meta_checkpoint",
    "meta_checkpoint_step",
    "meta_fingerprint",
    "resolve_meta_checkpoint",
    "save_meta_checkpoint",
]
