"""The ``oodpl`` command: a click group with lazily loaded subcommands and one-line errors.

Error policy (see :mod:`oodpl.cli.errors`): any failure prints exactly one line
``error: <message>`` to stderr and exits non-zero (2 for bad input, 1 otherwise, 130 when
interrupted); ``oodpl --debug ...`` (or ``OODPL_DEBUG=1``) also prints the traceback.
"""

from __future__ import annotations

import difflib
import errno
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from oodpl.cli import __version__
from oodpl.cli.commands import COMMANDS
from oodpl.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    CLIError,
    one_line,
)

_SIBLINGS = ("oodpl-core", "oodpl-models", "oodpl-data")


class _NeverRaised(Exception):
    pass


# click >= 8.2 raises NoArgsIsHelpError (a UsageError) for a group called without a command.
_NO_ARGS_IS_HELP: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError", _NeverRaised)


def _version_message() -> str:
    parts = []
    for name in _SIBLINGS:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return f"oodpl-cli {__version__} ({', '.join(parts)})"


def _show_version(ctx: click.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_message())
        ctx.exit()


def _print_error(message: str) -> None:
    click.echo(f"error: {one_line(message)}", err=True)


def _debug_requested(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("OODPL_DEBUG", "") not in ("", "0")


class OodplGroup(click.Group):
    """A group that loads subcommands on demand and turns every failure into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        eager = set(super().list_commands(ctx))
        lazy = {name for name, entry in COMMANDS.items() if entry.is_available()}
        return sorted(eager | lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = COMMANDS.get(cmd_name)
        if entry is None or not entry.is_available():
            return None
        return entry.load()

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            ctx.fail(f"no such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            entry = COMMANDS.get(name)
            if entry is not None:
                rows.append((name, entry.short_help))
            else:
                command = super().get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit=80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; every exception becomes ``error: ...`` and a non-zero exit status."""
        arguments = list(sys.argv[1:] if args is None else args)
        debug = _debug_requested(arguments)
        code = 0
        try:
            result = super().main(
                args=arguments,
                prog_name=prog_name or "oodpl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            if isinstance(result, int) and not isinstance(result, bool):
                code = result
        except click.exceptions.Abort:
            _print_error("aborted")
            code = EXIT_FAILURE
        except _NO_ARGS_IS_HELP as exc:  # bare `oodpl` or `oodpl config`: show the help
            click.echo(exc.format_message())
            code = 0
        except click.ClickException as exc:
            if debug:
                traceback.print_exc()
            message = exc.format_message()
            context = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and context is not None:
                message += f" (see '{context.command_path} --help')"
            _print_error(message)
            code = exc.exit_code
        except CLIError as exc:
            if debug:
                traceback.print_exc()
            _print_error(exc.format_line())
            code = exc.exit_code
        except KeyboardInterrupt:
            _print_error("interrupted")
            code = EXIT_INTERRUPTED
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # output piped into `head`; nothing to report
                code = EXIT_FAILURE
            else:
                if debug:
                    traceback.print_exc()
                _print_error(_describe(exc, debug))
                code = EXIT_FAILURE
        except Exception as exc:
            if debug:
                traceback.print_exc()
            _print_error(_describe(exc, debug))
            code = EXIT_FAILURE
        if standalone_mode:
            sys.exit(code)
        return code


def _describe(exc: BaseException, debug: bool) -> str:
    text = f"{type(exc).__name__}: {one_line(str(exc)) or 'no message'}"
    if not debug:
        text += " (run 'oodpl --debug ...' for the traceback)"
    return text


@click.group(
    cls=OodplGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    "-V",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, param, value: _show_version(ctx, value),
    help="Show the versions of the oodpl packages and exit.",
)
@click.option("--debug", is_flag=True, help="Print full tracebacks on errors.")
@click.pass_context
def oodpl(ctx: click.Context, debug: bool) -> None:
    """oodpl: out-of-distribution preference learning.

    Train reward models and policies (SFT, RM, DPO, HPL, PPO, OODPL meta-learning, rejection
    sampling), evaluate them across domains and write a report for every run.

    Run 'oodpl COMMAND --help' for the options of a command.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``oodpl = oodpl.cli.main:main``)."""
    oodpl.main(args=argv, prog_name="oodpl")


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["EXIT_BAD_INPUT", "OodplGroup", "main", "oodpl"]
