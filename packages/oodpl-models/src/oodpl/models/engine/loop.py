"""A small generic training loop on a :class:`TrainingEngine`.

For each optimizer step ``t``: take global batch ``t`` of the epoch's seeded permutation
(:mod:`oodpl.models.engine.distributed`), run this rank's ``grad_accum`` micro-batches through
``loss, metrics = loss_fn(engine.model, collate_fn(items))`` with ``engine.backward(loss)`` and
``engine.step()``, then log one record (means over micro-batches and ranks; with equal micro-batch
sizes the logged ``loss`` is the mean loss over the global batch), and every
``checkpoint_every`` steps (and at the end) save a resumable state ``step-XXXXXXXX/`` plus a
``latest`` pointer. A run resumed from step ``N`` restores parameters, optimizer, schedule, RNG
states and the data position (epoch, global batches consumed), so it continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from oodpl.models.engine.base import LossFn, TrainingEngine
from oodpl.models.engine.distributed import global_batches, rank_micro_batches
from oodpl.models.engine.state import EngineStateError, seed_everything

RESERVED_KEYS = ("step", "epoch", "lr", "loss", "grad_norm", "samples", "skipped")
LATEST_FILE = "latest"


@dataclass(frozen=True)
class TrainingProgress:
    """Where the loop stands in the data: stored in every checkpoint's ``extra.json``.

    Attributes:
        epoch: current epoch.
        batch_in_epoch: global batches of ``epoch`` already consumed (the sampler offset in
            batches; in examples it is ``batch_in_epoch * global_batch_size``).
        global_step: optimizer steps applied.
        samples_seen: examples consumed since the start of training.
        n_items, global_batch_size, seed: the data layout; a resume must use the same.
    """

    epoch: int
    batch_in_epoch: int
    global_step: int
    samples_seen: int
    n_items: int
    global_batch_size: int
    seed: int

    @property
    def sampler_offset(self) -> int:
        """Examples of the current epoch already consumed."""
        return self.batch_in_epoch * self.global_batch_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingProgress:
        try:
            return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})
        except KeyError as err:
            raise EngineStateError(f"training progress lacks the field {err.args[0]!r}") from None


@runtime_checkable
class TrainerState(Protocol):
    """Extra state a trainer keeps between steps (e.g. MORE's gradient momentum).

    ``state_dict()`` must return JSON-ready values (floats round-trip exactly); it is stored in
    each checkpoint's ``extra.json`` by the main rank, so it must be identical on every rank.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class LoopResult:
    """What :func:`train` returns: final step, per-step records, last checkpoint written."""

    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    progress: TrainingProgress | None = None


class JsonlLogger:
    """``on_log`` callback appending one JSON object per line to ``path`` (flushed per line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(dict(record), sort_keys=True) + "\n")


def checkpoint_name(step: int) -> str:
    """Directory name of the state saved after optimizer step ``step``."""
    return f"step-{step:08d}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A state directory, or the one named by ``<path>/latest`` for a checkpoint root."""
    path = Path(path)
    if (path / "engine.json").is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        target = path / latest.read_text().strip()
        if (target / "engine.json").is_file():
            return target
        raise EngineStateError(f"{latest} points to {target}, which is not a training state")
    raise EngineStateError(
        f"resume_from={str(path)!r} is neither a training state nor a root with {LATEST_FILE}"
    )


def train(
    engine: TrainingEngine,
    dataset: Sequence[Any],
    loss_fn: LossFn,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    max_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    trainer_state: TrainerState | None = None,
    batch_order: Callable[..., list[list[int]]] | None = None,
) -> LoopResult:
    """Train until ``max_steps`` optimizer steps (default ``engine.config.max_steps``).

    Args:
        engine: the training engine (any backend, any number of processes).
        dataset: a sequence indexable by ``int``; items are gathered per micro-batch.
        loss_fn: ``loss_fn(engine.model, batch) -> (loss, metrics)``; ``metrics`` maps names to
            floats or scalar tensors (same keys on every rank and micro-batch).
        collate_fn: turns a list of items into a batch (default
            ``torch.utils.data.default_collate``).
        checkpoint_dir, checkpoint_every: save a state every ``checkpoint_every`` steps and at
            the last step (``0`` saves only at the end); ``keep_last`` prunes older states.
        resume_from: a state directory, or a checkpoint root with a ``latest`` file.
        on_log: called on the main rank with one record per optimizer step.
        on_checkpoint: called on every rank with ``(state_dir, step)`` after each save.
        trainer_state: extra trainer state saved with every checkpoint and restored on resume.
        batch_order: ``batch_order(n_items, *, global_batch_size, seed, epoch)`` -> the epoch's
            global batches (default :func:`~oodpl.models.engine.distributed.global_batches`, a
            seeded shuffle; e.g. length-bucketed batches). Must be deterministic in its
            arguments so that resuming reproduces the order.
    """
    cfg = engine.config
    max_steps = cfg.max_steps if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    check_checkpointing(checkpoint_every, keep_last)
    collate = collate_fn or torch.utils.data.default_collate
    n_items = len(dataset)
    gbs = cfg.global_batch_size(engine.world_size)
    fresh = TrainingProgress(0, 0, 0, 0, n_items, gbs, cfg.seed)
    if resume_from is not None:
        state_dir = resolve_checkpoint(resume_from)
        extra = engine.load_state(state_dir)
        progress = TrainingProgress.from_dict(extra.get("progress", {}))
        _check_layout(progress, fresh, state_dir)
        if trainer_state is not None:
            if "trainer_state" not in extra:
                raise EngineStateError(f"{state_dir / 'extra.json'} holds no trainer_state")
            trainer_state.load_state_dict(extra["trainer_state"])
    else:
        seed_everything(cfg.seed + engine.rank)
        progress = fresh
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    result = LoopResult(global_step=progress.global_step, progress=progress)
    engine.module.train()
    order = batch_order or global_batches
    epoch_batches: tuple[int, list[list[int]]] | None = None
    while progress.global_step < max_steps:
        if epoch_batches is None or epoch_batches[0] != progress.epoch:  # once per epoch
            epoch_batches = (
                progress.epoch,
                order(n_items, global_batch_size=gbs, seed=cfg.seed, epoch=progress.epoch),
            )
        batches = epoch_batches[1]
        global_batch = batches[progress.batch_in_epoch]
        record = _run_global_batch(engine, dataset, loss_fn, collate, global_batch, progress)
        applied = record.pop("step_applied")
        done = progress.batch_in_epoch + 1
        progress = replace(
            progress,
            epoch=progress.epoch + (done == len(batches)),
            batch_in_epoch=done % len(batches),
            global_step=engine.global_step,
            samples_seen=progress.samples_seen + gbs,
        )
        record["samples"] = progress.samples_seen
        result.history.append(record)
        if engine.is_main and on_log is not None:
            on_log(record)
        at_end = progress.global_step >= max_steps
        periodic = checkpoint_every and progress.global_step % checkpoint_every == 0
        if root is not None and applied and (periodic or at_end):
            path = _save(engine, root, progress, keep_last, trainer_state)
            result.last_checkpoint = path
            if on_checkpoint is not None:
                on_checkpoint(path, progress.global_step)
    result.global_step, result.progress = progress.global_step, progress
    return result


def _run_global_batch(
    engine: TrainingEngine,
    dataset: Sequence[Any],
    loss_fn: LossFn,
    collate: Callable[[list[Any]], Any],
    global_batch: list[int],
    progress: TrainingProgress,
) -> dict[str, Any]:
    cfg = engine.config
    micro_batches = rank_micro_batches(
        global_batch,
        rank=engine.rank,
        world_size=engine.world_size,
        micro_batch_size=cfg.micro_batch_size,
    )
    # metrics stay tensors until the global batch ends: one device sync per optimizer step
    sums: dict[str, Any] = {}
    outcome = None
    for indices in micro_batches:
        batch = engine.to_device(collate([dataset[i] for i in indices]))
        out = loss_fn(engine.model, batch)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise TypeError("loss_fn must return (loss, metrics: dict), got " + type(out).__name__)
        loss, metrics = out
        engine.backward(loss)
        outcome = engine.step()
        values = {"loss": loss.detach().double()}
        for key, value in metrics.items():
            if key in RESERVED_KEYS:
                raise ValueError(f"loss_fn metric name {key!r} is reserved by the loop")
            values[key] = (
                value.detach().double().reshape(()) if isinstance(value, torch.Tensor) else value
            )
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
    assert outcome is not None
    keys = sorted(sums)
    means = torch.tensor([float(sums[k]) / len(micro_batches) for k in keys], dtype=torch.float64)
    means = engine.all_reduce_mean(means)
    record: dict[str, Any] = {
        "step": engine.global_step,
        "epoch": progress.epoch,
        "lr": outcome.lr,
        "grad_norm": outcome.grad_norm,
        "skipped": outcome.skipped,
        "step_applied": outcome.stepped,
    }
    record.update({k: float(v) for k, v in zip(keys, means.tolist(), strict=True)})
    return record


def _check_layout(saved: TrainingProgress, now: TrainingProgress, state_dir: Path) -> None:
    for name in ("n_items", "global_batch_size", "seed"):
        if getattr(saved, name) != getattr(now, name):
            raise ValueError(
                f"{state_dir}: cannot resume, {name} was {getattr(saved, name)} and is now "
                f"{getattr(now, name)} (the data order would differ)"
            )


def _save(
    engine: TrainingEngine,
    root: Path,
    progress: TrainingProgress,
    keep_last: int | None,
    trainer_state: TrainerState | None,
) -> Path:
    name = checkpoint_name(progress.global_step)
    extra: dict[str, Any] = {"progress": asdict(progress)}
    if trainer_state is not None:
        extra["trainer_state"] = trainer_state.state_dict()
    path = engine.save_state(root / name, extra=extra)
    if engine.is_main:
        point_latest(root, name, keep_last=keep_last)
    engine.barrier()
    return path


def check_checkpointing(checkpoint_every: object, keep_last: object) -> None:
    """``checkpoint_every`` an int >= 0, ``keep_last`` an int >= 1 or ``None`` (every trainer
    that writes states checks its arguments with this)."""
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise TypeError(f"checkpoint_every must be an int, got {checkpoint_every!r}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    ):
        raise ValueError(f"keep_last must be an int >= 1 or None, got {keep_last!r}")


def point_latest(root: Path, name: str, *, keep_last: int | None) -> None:
    """Point ``root/latest`` at the complete state ``root/name`` (written to a temporary file
    and renamed, so ``latest`` is never half-written), then keep only the newest ``keep_last``
    ``step-*`` states (``None``: all)."""
    tmp = root / (LATEST_FILE + ".partial")
    tmp.write_text(name + "\n")
    tmp.replace(root / LATEST_FILE)
    if keep_last is not None:
        states = sorted(
            p
            for p in root.glob("step-*")
            if p.is_dir() and not p.name.endswith((".partial", ".old"))
        )
        for old in states[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
