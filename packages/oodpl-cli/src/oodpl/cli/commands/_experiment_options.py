"""The options every config-driven experiment command shares (``oodpl iterate``, ``study …``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def experiment_options(kind: str, set_example: str, default_name: str) -> Callable[[F], F]:
    """``--config``, ``--set``, ``--output-dir``, ``--name``, ``--overwrite``, ``--no-progress``.

    ``kind`` is the config ``kind`` the command accepts, ``set_example`` a ``KEY=VALUE`` shown in
    the ``--set`` help and ``default_name`` the run-directory name used without ``--name``.
    """
    options = [
        click.option(
            "--config",
            "-c",
            "config_file",
            type=click.Path(path_type=Path),
            help=f"Run config (YAML); its 'kind' must be '{kind}' or absent.",
        ),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Override a config value, e.g. --set {set_example} (repeatable).",
        ),
        click.option(
            "--output-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="Parent directory of the run directory (config output_dir).",
        ),
        click.option("--name", help=f"Run directory name (default {default_name})."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run directory."),
        click.option("--no-progress", is_flag=True, help="Do not draw progress bars."),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
