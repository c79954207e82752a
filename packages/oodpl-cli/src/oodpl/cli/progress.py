"""Console helpers: rich progress bars (on stderr) and summary tables (on stdout).

Progress goes to stderr so that a command's real output (tables, paths) can be piped. When
stderr is not a terminal, rich prints no animation; pass ``disable=True`` to silence bars.
Metric tables print each metric's one-line meaning from the report glossary.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from oodpl.cli.report.glossary import meaning_of

T = TypeVar("T")


def stdout_console() -> Console:
    """Console for command output."""
    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    """Console for progress and status messages."""
    return Console(stderr=True, highlight=False)


def _progress(console: Console | None, disable: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or stderr_console(),
        disable=disable,
        transient=False,
    )


@contextlib.contextmanager
def progress_bar(
    total: int | None,
    description: str,
    *,
    console: Console | None = None,
    disable: bool = False,
) -> Iterator[Callable[..., None]]:
    """A progress bar; yields ``advance(n=1, **fields)``. ``total=None`` shows a spinner only.

    Example::

        with progress_bar(len(batches), "training") as advance:
            for batch in batches:
                step(batch)
                advance()
    """
    if total is not None and total < 0:
        raise ValueError(f"progress_bar total must be >= 0 or None, got {total}")
    with _progress(console, disable) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, **fields: Any) -> None:
            progress.update(task, advance=n, **fields)

        yield advance


def track(
    items: Iterable[T],
    description: str,
    *,
    total: int | None = None,
    console: Console | None = None,
    disable: bool = False,
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar (``total`` taken from ``len`` when possible)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, description, console=console, disable=disable) as advance:
        for item in items:
            yield item
            advance()


def format_value(value: Any) -> str:
    """Numbers with 4 significant digits, everything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def summary_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table with a title; cells are formatted with :func:`format_value`."""
    rows = [list(row) for row in rows]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"summary_table row has {len(row)} cells, expected {len(columns)}")
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        numeric = bool(rows) and all(
            isinstance(row[index], (int, float)) or row[index] is None for row in rows
        )
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(format_value(cell) for cell in row))
    return table


def metrics_table(
    metrics: Mapping[str, Any], title: str = "metrics", meanings: Mapping[str, str] | None = None
) -> Table:
    """metric | value | meaning (from the glossary, ``meanings`` first)."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning", overflow="fold")
    for name, value in metrics.items():
        table.add_row(name, format_value(value), meaning_of(name, meanings) or "undocumented")
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    """Print a table to stdout (or ``console``)."""
    (console or stdout_console()).print(table)
