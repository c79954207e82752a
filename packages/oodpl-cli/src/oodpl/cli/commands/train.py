"""``oodpl train {sft,rm,dpo,hpl,ppo,meta,meta-test,rjs}``: train and evaluate, one run directory.

Each subcommand reads a run config (``--config file.yaml``, ``--set key=value`` overrides; the
subcommand fixes ``kind``), trains (:mod:`oodpl.cli.pipelines.train`) and writes the run
directory: config.yaml, env.json, metrics.jsonl, checkpoints/, results/*.json, report.md and
report.html. ``--deepspeed zeroN`` trains with DeepSpeed ZeRO stage N (launch several processes
with ``torchrun``/``deepspeed`` and an explicit ``--run-dir``), ``--offload`` keeps optimizer
state (and, with zero3, parameters) in CPU memory; ``--resume RUN_DIR`` continues an interrupted
run from its last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oodpl.cli.config.schema import RUN_KINDS, RunConfig
from oodpl.cli.errors import BadInputError, ConfigError

SET_HELP = "Override a config value, e.g. --set train.lr=1e-4 (repeatable)."
ZERO_STAGES = ("zero0", "zero1", "zero2", "zero3")


def _file_kind(config_file: Path) -> str | None:
    """The ``kind`` written in a config file, if it is readable YAML with one."""
    import yaml

    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load_config reports the problem with file and line
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def engine_overrides(deepspeed: str | None, offload: bool) -> list[str]:
    """``--set`` overrides for ``--deepspeed zeroN`` and ``--offload``."""
    if offload and deepspeed in (None, "zero0"):
        raise BadInputError("--offload needs --deepspeed zero1, zero2 or zero3")
    if deepspeed is None:
        return []
    out = ["engine.backend=deepspeed", f"engine.zero_stage={deepspeed[-1]}"]
    if offload:
        out.append("engine.offload_optimizer=true")
        if deepspeed == "zero3":
            out.append("engine.offload_params=true")
    return out


def location_overrides(output_dir: Path | None, run_dir: Path | None) -> list[str]:
    """``--set`` overrides for ``--output-dir`` and ``--run-dir``."""
    if output_dir is not None and run_dir is not None:
        raise BadInputError("pass either --output-dir or --run-dir, not both")
    if run_dir is not None:
        if not run_dir.name or run_dir.name in (".", ".."):
            raise BadInputError(f"--run-dir must end in a directory name, got {run_dir}")
        return [f"output_dir={run_dir.parent}", f"name={run_dir.name}"]
    return [f"output_dir={output_dir}"] if output_dir is not None else []


def resolve_train_config(
    kind: str,
    config_file: Path | None,
    overrides: tuple[str, ...],
    *,
    deepspeed: str | None = None,
    offload: bool = False,
    output_dir: Path | None = None,
    run_dir: Path | None = None,
    resume: Path | None = None,
) -> RunConfig:
    """The resolved config of ``oodpl train KIND`` (file, then flags, then ``--set``)."""
    from oodpl.cli.config.loader import load_config, parse_override
    from oodpl.cli.pipelines.runs import load_resumed_config

    flags = engine_overrides(deepspeed, offload)
    for text in overrides:
        key, value = parse_override(text)
        if key == "kind" and value.strip() != kind:
            raise ConfigError(f"--set kind={value.strip()} conflicts with 'oodpl train {kind}'")
    if resume is not None:
        if config_file is not None or output_dir is not None or run_dir is not None:
            raise BadInputError(
                "--resume continues a run with its own config.yaml and directory: drop "
                "--config / --output-dir / --run-dir"
            )
        return load_resumed_config(resume, kind, [*flags, *overrides])
    if config_file is not None and config_file.is_file():
        written = _file_kind(config_file)
        if written is not None and written != kind:
            raise ConfigError(
                f"kind {written!r} does not match 'oodpl train {kind}'",
                source=str(config_file),
                hint=f"run 'oodpl train {written} --config {config_file}'",
            )
    location = location_overrides(output_dir, run_dir)
    return load_config(config_file, [f"kind={kind}", *flags, *location, *overrides])


def _print_summary(path: Path, outcome: object) -> None:
    from oodpl.cli.progress import print_table, summary_table

    rows = []
    for evaluation in getattr(outcome, "evaluations", []):
        if evaluation is None:
            continue
        metric = evaluation.headline
        rows.append(
            [
                evaluation.label,
                metric,
                evaluation.mean(metric, "id"),
                evaluation.mean(metric, "ood"),
            ]
        )
    merged: dict[tuple[str, str], list] = {}
    for row in getattr(outcome, "summary", []):
        metric, _, group = row.metric.partition("/")
        if group not in ("id", "ood"):
            metric, group = row.metric, "id"
        key = (row.note.split(":")[0], metric)
        cells = merged.setdefault(key, [None, None])
        cells[0 if group == "id" else 1] = row.value
    rows.extend([label, metric, *cells] for (label, metric), cells in merged.items())
    if rows:
        print_table(summary_table(f"run {path.name}", ["model", "metric", "ID", "OOD"], rows))
    click.echo(f"run directory: {path}")
    click.echo(f"report: {path / 'report.html'}")


def _make_command(kind: str) -> click.Command:
    @click.command(kind, short_help=f"Train kind '{kind}' and evaluate it.")
    @click.option(
        "--config",
        "-c",
        "config_file",
        type=click.Path(path_type=Path, dir_okay=True),
        help="Run config (YAML); its 'kind' must be this subcommand or absent.",
    )
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
    @click.option(
        "--deepspeed",
        type=click.Choice(ZERO_STAGES),
        help="Train with DeepSpeed at this ZeRO stage (CPU or GPU; launch several processes "
        "with torchrun or deepspeed).",
    )
    @click.option(
        "--offload",
        is_flag=True,
        help="With --deepspeed zero1-3: optimizer state in CPU memory (zero3: parameters too).",
    )
    @click.option(
        "--resume",
        type=click.Path(path_type=Path),
        metavar="RUN_DIR",
        help="Continue an interrupted run from its last checkpoint.",
    )
    @click.option(
        "--output-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Parent directory of the run directory (config output_dir).",
    )
    @click.option(
        "--run-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="The exact run directory (required for multi-process runs).",
    )
    @click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
    @click.option("--debug", is_flag=True, help="Print full tracebacks on errors.")
    def command(
        config_file: Path | None,
        overrides: tuple[str, ...],
        deepspeed: str | None,
        offload: bool,
        resume: Path | None,
        output_dir: Path | None,
        run_dir: Path | None,
        overwrite: bool,
        debug: bool,
    ) -> None:
        config = resolve_train_config(
            kind,
            config_file,
            overrides,
            deepspeed=deepspeed,
            offload=offload,
            output_dir=output_dir,
            run_dir=run_dir,
            resume=resume,
        )
        from oodpl.cli.pipelines.train import run_training

        path, outcome = run_training(
            config, resume=resume is not None, overwrite=overwrite, command=sys.argv
        )
        if outcome is not None:
            _print_summary(path, outcome)

    command.help = (
        f"Train a '{kind}' run and evaluate it before and after training.\n\n"
        "Writes a run directory (config.yaml, env.json, metrics.jsonl, checkpoints/, "
        "results/, report.md, report.html). See 'oodpl config schema' for the config keys."
    )
    return command


@click.group("train")
def train() -> None:
    """Train a model (sft, rm, dpo, hpl, ppo, meta, meta-test, rjs) and evaluate it.

    Every run writes a directory with the resolved config, environment, metrics (JSONL),
    checkpoints and a report (report.md, report.html).
    """


for _kind in RUN_KINDS:
    train.add_command(_make_command(_kind))
