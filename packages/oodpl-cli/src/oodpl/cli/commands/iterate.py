"""``oodpl iterate``: iterative DPO labelled by EXRM or DPORM ([DPORM] Alg. 1, METHODS §4)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oodpl.cli.commands._experiment_options import experiment_options


@click.command("iterate")
@experiment_options("iterate", "iterate.iterations=2", "iterate-<timestamp>")
def iterate(
    config_file: Path | None,
    overrides: tuple[str, ...],
    output_dir: Path | None,
    name: str | None,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Iterative DPO: π_0 = DPO(π, D), then T rounds of sample K, label, DPO.

    \b
    Labellers (iterate.labellers, each its own chain from π_0):
      exrm   a Bradley–Terry reward model trained on D
      dporm  π_0's implicit reward β(log π_0 − log π)
    Each round samples iterate.samples_per_prompt responses per prompt from π_(t−1), pairs the
    highest- and lowest-scored ones and trains π_t by DPO. The report shows the gold reward of
    every π_t on the synthetic benchmark and how often the labels agree with the gold reward.
    """
    from oodpl.cli.pipelines.exp_common import resolve_experiment_config
    from oodpl.cli.pipelines.iterate import run_iterate
    from oodpl.cli.progress import print_table, summary_table

    config = resolve_experiment_config(
        "iterate", config_file, overrides, output_dir=output_dir, name=name
    )
    result = run_iterate(
        config, overwrite=overwrite, show_progress=not no_progress, command=sys.argv
    )
    rows = [[r.metric, r.value, r.std, r.note] for r in result.rows]
    print_table(summary_table("iterate", ["metric", "value", "std", "note"], rows))
    click.echo(f"run directory: {result.run.path}")
    click.echo(f"report: {result.report_html}")
