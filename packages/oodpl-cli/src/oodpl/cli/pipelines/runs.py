"""The life cycle of a training run directory: create or resume it, save, write the report.

Multi-process runs (torchrun / the deepspeed launcher): every rank computes the same run
directory path (it must be named explicitly: ``--run-dir`` or ``name``), only rank 0 creates it
and writes config, environment, metrics, results and report; engine states under
``checkpoints/`` are written collectively (each rank its own files).

Resuming (``--resume RUN_DIR``): training continues from ``checkpoints/latest`` (the loop
restores parameters, optimizer, schedule, RNG states and data position). ``metrics.jsonl`` is
first cut back to that step, so every training step appears exactly once: training records after
the checkpoint and evaluation records after step 0 are dropped (they are written again).
A run killed before its first checkpoint restarts from step 0.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from oodpl.cli.config.schema import RunConfig
from oodpl.cli.errors import BadInputError, PathNotFoundError
from oodpl.cli.pipelines.build import FINAL_CHECKPOINT, RunData
from oodpl.cli.run_dir import CONFIG_FILE, RunDir, atomic_write_text, read_metrics

STATES_KEPT = 2


@dataclasses.dataclass
class RunContext:
    """Everything a kind's pipeline needs besides its models.

    Attributes:
        config: the resolved run config (``name`` set).
        path: the run directory (the same on every rank).
        run: the open :class:`RunDir` on rank 0, ``None`` elsewhere.
        rank, processes: this process's rank and the number of processes.
        resume_from: the checkpoint root to resume from (holds ``latest``), or ``None``.
        resumed_step: the optimizer step of that checkpoint (0 for a fresh run).
        data: the run's records.
        resumed: whether this process continues an interrupted run (``--resume``).
    """

    config: RunConfig
    path: Path
    run: RunDir | None
    rank: int
    processes: int
    resume_from: Path | None
    resumed_step: int
    data: RunData
    resumed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoints / FINAL_CHECKPOINT

    @property
    def log_path(self) -> Path | None:
        """metrics.jsonl on rank 0 (trainers append one record per step), else ``None``."""
        return self.run.metrics_path if self.run is not None else None

    def trainer_io(self) -> dict[str, Any]:
        """Keyword arguments of the engine-loop trainers: log, checkpoints, resume."""
        return {
            "log_path": self.log_path,
            "checkpoint_dir": self.checkpoints,
            "checkpoint_every": self.config.train.save_every,
            "keep_last": STATES_KEPT,
            "resume_from": self.resume_from,
        }

    def echo(self, message: str) -> None:
        """A status line on stderr (rank 0 only)."""
        if self.is_main:
            click.echo(message, err=True)


def run_path(config: RunConfig) -> Path:
    return Path(config.output_dir) / (config.name or "")


def checkpoint_step(root: Path) -> int | None:
    """The step of ``root/latest`` (a loop or meta-training checkpoint root), ``None`` when there
    is none."""
    from oodpl.models.engine.loop import resolve_checkpoint
    from oodpl.models.engine.state import EngineStateError
    from oodpl.models.trainers.meta_checkpoint import META_STATE_FILE, meta_checkpoint_step

    if not (root / "latest").is_file():
        return None
    try:
        if (root / (root / "latest").read_text().strip() / META_STATE_FILE).is_file():
            return meta_checkpoint_step(root)
        state = resolve_checkpoint(root)
        return int(json.loads((state / "engine.json").read_text())["global_step"])
    except (EngineStateError, OSError, ValueError, KeyError) as exc:
        raise BadInputError(f"--resume: cannot read the checkpoint in {root}: {exc}") from None


def trim_metrics(run: RunDir, step: int) -> int:
    """Keep training records up to ``step`` and the step-0 evaluation; returns records dropped."""
    records = read_metrics(run.metrics_path)
    kept = [
        r
        for r in records
        if (r.get("phase", "train") == "train" and int(r.get("step", 0)) <= step)
        or (r.get("phase", "train") != "train" and int(r.get("step", 0)) == 0)
    ]
    if len(kept) != len(records):
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        atomic_write_text(run.metrics_path, text)
    return len(records) - len(kept)


def load_resumed_config(run_dir: Path, kind: str, overrides: Sequence[str]) -> RunConfig:
    """The resolved config of a run directory (plus ``--set`` overrides), checked for ``kind``."""
    from oodpl.cli.config.loader import load_config

    if not run_dir.is_dir():
        raise PathNotFoundError(run_dir, "--resume run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise BadInputError(f"--resume: {run_dir} is not an oodpl run (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE, overrides)
    if config.kind != kind:
        raise BadInputError(
            f"--resume: {run_dir} is a {config.kind!r} run, not {kind!r} "
            f"(use 'oodpl train {config.kind} --resume {run_dir}')"
        )
    return dataclasses.replace(config, output_dir=str(run_dir.parent), name=run_dir.name)


def prepare_run(
    config: RunConfig,
    data_builder: Callable[[RunConfig], RunData],
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
) -> RunContext:
    """Create (or reopen for ``resume``) the run directory and build the run's data."""
    from oodpl.models.engine.distributed import read_distributed_env

    env = read_distributed_env()
    if config.name is None:
        if env.world_size > 1:
            raise BadInputError(
                f"a {env.world_size}-process run needs an explicit run directory that every "
                "process agrees on: pass --run-dir DIR (or set 'name' in the config)"
            )
        config = dataclasses.replace(config, name=RunDir.default_name(config.kind))
    path = run_path(config)
    data = data_builder(config)
    run: RunDir | None = None
    resume_from, step = None, 0
    if resume:
        found = checkpoint_step(path / "checkpoints")
        if found is not None:
            resume_from, step = path / "checkpoints", found
        if env.rank == 0:
            run = RunDir(path)
            run.write_config(config)
            dropped = trim_metrics(run, step)
            where = f"step {step}" if resume_from else "the start (no checkpoint was written)"
            click.echo(f"resuming {path} from {where}; {dropped} metric records dropped", err=True)
    elif env.rank == 0:
        run = RunDir.start(config, overwrite=overwrite, command=command)
    return RunContext(
        config, path, run, env.rank, env.world_size, resume_from, step, data, resumed=resume
    )


def final_weights(ctx: RunContext, model: Any, engine: Any, rebuild: Callable[[], Any]) -> Any:
    """The trained model with complete weights on rank 0 (``None`` elsewhere), saved as
    ``checkpoints/final`` in safetensors.

    Under ZeRO-3 the parameters are partitioned, so the consolidated fp32 weights (a collective)
    are loaded into a freshly built copy (``rebuild()``); otherwise ``model`` holds them.
    """
    if (
        engine is not None
        and engine.config.backend == "deepspeed"
        and engine.config.zero_stage == 3
    ):
        state = engine.consolidated_state_dict()
        if ctx.is_main:
            fresh = rebuild()
            fresh.load_state_dict(state)
            model = fresh
    if ctx.is_main:
        model.save_pretrained(ctx.final_checkpoint)
    return model if ctx.is_main else None


def barrier(engine: Any) -> None:
    """Wait for every rank (no-op for one process or no engine)."""
    if engine is not None:
        engine.barrier()


__all__ = [
    "STATES_KEPT",
    "RunContext",
    "barrier",
    "checkpoint_step",
    "final_weights",
    "load_resumed_config",
    "prepare_run",
    "run_path",
    "trim_metrics",
]
