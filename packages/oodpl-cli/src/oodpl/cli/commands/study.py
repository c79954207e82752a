"""``oodpl study dporm``: EXRM versus DPORM over settings and seeds ([DPORM], METHODS §4)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oodpl.cli.commands._experiment_options import experiment_options


@click.group("study")
def study() -> None:
    """Multi-seed studies on the synthetic benchmark (mean ± std over seeds, one report)."""


@study.command("dporm", short_help="EXRM vs DPORM in and out of distribution, over seeds.")
@experiment_options("study", "study.seeds=0,1", "study-dporm-<timestamp>")
def dporm(
    config_file: Path | None,
    overrides: tuple[str, ...],
    output_dir: Path | None,
    name: str | None,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Train an explicit reward model (EXRM) and a DPO policy (DPORM) per setting and seed.

    A setting trains on one domain of the synthetic benchmark and tests on the others
    (study.settings, default: every domain). Reports ID accuracy, mean OOD accuracy and the drop
    as mean ± std over study.seeds, the accuracy matrices, and the share of OOD cells where EXRM
    beats DPORM. Stage steps and learning rates: 'oodpl config schema study'.
    """
    from oodpl.cli.pipelines.exp_common import resolve_experiment_config
    from oodpl.cli.pipelines.study import run_study
    from oodpl.cli.progress import print_table, summary_table

    config = resolve_experiment_config(
        "study",
        config_file,
        [*overrides, "study.experiment=dporm"],
        output_dir=output_dir,
        name=name,
    )
    result = run_study(config, overwrite=overwrite, show_progress=not no_progress, command=sys.argv)
    rows = [[r.metric, r.value, r.std, r.note] for r in result.rows]
    print_table(summary_table("study dporm", ["metric", "mean", "std", "over"], rows))
    click.echo(f"run directory: {result.run.path}")
    click.echo(f"report: {result.report_html}")
