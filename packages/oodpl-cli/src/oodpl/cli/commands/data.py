"""``oodpl data``: the data sources of ``oodpl.data.registry``.

Listed by ``oodpl --help`` only when ``oodpl.data.registry`` is installed.
"""

from __future__ import annotations

import json
from typing import Any

import click

MAX_DOMAINS_SHOWN = 6


def source_row(info: dict[str, Any]) -> tuple[str, str, str, str]:
    """(name, record type, domains, description) of one ``source_info`` dict."""
    domains = [str(d) for d in info.get("domains") or []]
    shown = ", ".join(domains[:MAX_DOMAINS_SHOWN])
    if len(domains) > MAX_DOMAINS_SHOWN:
        shown += f", … ({len(domains)} in all)"
    return (
        str(info.get("name", "?")),
        str(info.get("record_type", "")),
        shown or "–",
        str(info.get("description", "")),
    )


@click.group("data")
def data() -> None:
    """Data sources and their domains."""


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_sources(as_json: bool) -> None:
    """List the data sources oodpl can load (names usable as data.source in configs)."""
    from oodpl.data import registry

    infos = [registry.source_info(spec) for spec in registry.list_sources()]
    if as_json:
        click.echo(json.dumps(infos, indent=2, default=str))
        return
    from oodpl.cli.progress import print_table, summary_table

    rows = [source_row(info) for info in infos]
    print_table(summary_table("data sources", ["name", "records", "domains", "description"], rows))
