"""``oodpl env``: versions and device information, as recorded in every run's env.json."""

from __future__ import annotations

import json

import click


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def env(as_json: bool) -> None:
    """Print Python, package versions, device and git commit (paste it into bug reports)."""
    from oodpl.cli.progress import print_table, summary_table
    from oodpl.cli.run_dir import environment_summary

    summary = environment_summary(command=[])
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    rows: list[tuple[str, object]] = [
        ("python", summary["python"]),
        ("platform", summary["platform"]),
    ]
    rows += [(name, version or "not installed") for name, version in summary["packages"].items()]
    rows += [(f"device.{k}", v) for k, v in summary["device"].items()]
    git = summary["git"]
    rows.append(
        ("git commit", f"{git['commit']}{' (dirty)' if git['dirty'] else ''}" if git else "–")
    )
    print_table(summary_table("oodpl environment", ["", "value"], rows))
