"""``oodpl report RUN_DIR``: rebuild a run's report.md and report.html from its stored files."""

from __future__ import annotations

from pathlib import Path

import click

from oodpl.cli.errors import PathNotFoundError


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--strict",
    is_flag=True,
    help="Fail when a metric has no documented meaning (instead of a warning in the report).",
)
def report(run_dir: Path, strict: bool) -> None:
    """Rebuild report.md and report.html of RUN_DIR.

    The report is made from the run's config.yaml, env.json, metrics.jsonl and results/*.json:
    OOD accuracy heatmaps, reliability diagrams, reward-difference box plots, gold reward versus
    temperature and training curves. report.html embeds every image and opens from disk.
    """
    if not run_dir.exists():
        raise PathNotFoundError(run_dir, "run directory")
    if not run_dir.is_dir():
        raise PathNotFoundError(run_dir, "run directory (this is a file)")
    from oodpl.cli.report.builder import build_document, write_report

    document = build_document(run_dir, strict=strict)
    markdown, html = write_report(run_dir, document)
    for warning in document.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {markdown}")
    click.echo(f"wrote {html}")
