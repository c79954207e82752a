"""``oodpl config``: check a run config, print it resolved, list the schema's keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from oodpl.cli.config.fields import MAX, MIN, MIN_EXCLUSIVE, help_of
from oodpl.cli.config.loader import (
    describe_type,
    dump_config,
    field_types,
    load_config,
    unwrap_optional,
)
from oodpl.cli.config.schema import RunConfig

SET_HELP = "Override a config value, e.g. --set train.lr=1e-4 (repeatable)."


@click.group("config")
def config() -> None:
    """Check a run config, print it resolved, or list every config key."""


@config.command("check", short_help="Validate a config file (keys, types, bounds).")
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def check(config_file: Path, overrides: tuple[str, ...]) -> None:
    """Validate CONFIG_FILE (unknown keys, types, bounds) and report the run kind."""
    run = load_config(config_file, overrides)
    click.echo(f"ok: {config_file} (kind {run.kind})")


@config.command("show", short_help="Print a config resolved, defaults and overrides applied.")
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def show(config_file: Path, overrides: tuple[str, ...]) -> None:
    """Print CONFIG_FILE resolved: every key with defaults and overrides applied."""
    click.echo(dump_config(load_config(config_file, overrides)), nl=False)


def schema_rows(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf field of the schema."""
    rows = []
    hints = field_types(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        _, inner = unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(inner):
            rows.extend(schema_rows(inner, f"{key}."))
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        type_name = describe_type(hints[field.name])
        low, high = field.metadata.get(MIN), field.metadata.get(MAX)
        opening = "(" if field.metadata.get(MIN_EXCLUSIVE) else "["
        if low is not None and high is not None:
            type_name += f" in {opening}{low}, {high}]"
        elif low is not None:
            type_name += f" {'>' if opening == '(' else '>='} {low}"
        elif high is not None:
            type_name += f" <= {high}"
        rows.append((key, type_name, default, help_of(field)))
    return rows


@config.command("schema", short_help="List every config key with type, default and meaning.")
@click.argument("section", required=False)
def schema(section: str | None) -> None:
    """List every config key with its type, default and meaning (optionally one SECTION)."""
    rows = schema_rows()
    if section:
        rows = [r for r in rows if r[0] == section or r[0].startswith(section + ".")]
        if not rows:
            from oodpl.cli.errors import BadInputError

            raise BadInputError(f"no config section or key named {section!r}")
    width = max(len(r[0]) for r in rows)
    for key, type_name, default, help_text in rows:
        click.echo(f"{key.ljust(width)}  {help_text}")
        click.echo(f"{'':{width}}    type: {type_name}; default: {default}")
