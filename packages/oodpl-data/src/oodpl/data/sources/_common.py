"""What every source module shares: its registry entry, file lookup, and typed field access."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodpl.data.errors import DataFormatError
from oodpl.data.io import Row, iter_rows
from oodpl.data.records import RecordCollector

# read(path, collector, *, split, **options) -> rows ; process(rows, collector, *, split, **options)
RowsFromPath = Callable[..., Iterable[Row]]
ProcessRows = Callable[..., None]
HubRequests = Callable[[tuple[str, ...], "str | None"], list[tuple[dict[str, Any], "str | None"]]]


@dataclass(frozen=True)
class SourceSpec:
    """A data source as the registry and ``oodpl data list`` see it.

    ``rows(path, collector, *, domains, split)`` reads the upstream layout under ``path`` into
    :class:`~oodpl.data.io.Row` objects; ``process(rows, collector, *, split, **options)`` turns
    rows into records. ``hub_requests(domains, split)`` lists ``datasets.load_dataset`` keyword
    arguments (with a row hint) for loading from the hub instead. ``options`` maps each
    source-specific keyword to its default. ``open_domains``: any domain name is accepted
    (``domains`` is then empty).
    """

    name: str
    description: str
    domains: tuple[str, ...]
    record_type: str
    path_hint: str
    hub_id: str | None
    splits: tuple[str, ...]
    default_split: str | None
    rows: RowsFromPath
    process: ProcessRows
    options: Mapping[str, Any] = field(default_factory=dict)
    hub_requests: HubRequests | None = None
    aliases: tuple[str, ...] = ()
    split_aliases: Mapping[str, str] = field(default_factory=dict)
    open_domains: bool = False
    homepage: str = ""


def train_split_hub_requests(
    domains: tuple[str, ...], split: str | None
) -> list[tuple[dict[str, Any], str | None]]:
    """``hub_requests`` of a single-config hub dataset: one request for ``split`` (default
    ``"train"``), no row hint; ``domains`` is ignored."""
    return [({"split": split or "train"}, None)]


def data_files(path: Path, patterns: Sequence[str], *, what: str) -> list[Path]:
    """``[path]`` for a file; else the sorted matches of the first glob pattern that matches."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"path: {str(path)!r} does not exist ({what})")
    for pattern in patterns:
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found
    raise FileNotFoundError(
        f"path: no {what} under {str(path)!r} (looked for {', '.join(patterns)})"
    )


def file_rows(
    files: Iterable[tuple[Path, str | None]], collector: RecordCollector
) -> Iterator[Row]:
    """Rows of each ``(file, hint)``, errors routed through ``collector.skip``."""
    for path, hint in files:
        collector.add_file(path)
        for row in iter_rows(path, on_error=collector.skip):
            yield Row(row.path, row.line, row.data, row.unit, hint) if hint else row


def _type_name(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def get(
    row: Row,
    obj: Any,
    key: str,
    types: type | tuple[type, ...],
    *,
    path: str = "",
    optional: bool = False,
    nullable: bool = False,
) -> Any:
    """``obj[key]`` checked against ``types``; ``DataFormatError`` naming ``path.key`` otherwise.

    ``bool`` never passes for ``int``/``float``. ``optional``: a missing key gives ``None``;
    ``nullable``: an explicit ``null`` gives ``None``.
    """
    name = f"{path}.{key}" if path else key
    if not isinstance(obj, Mapping):
        raise row.error(
            f"expected an object, got {type(obj).__name__}", field=path or None, reason="wrong_type"
        )
    if key not in obj:
        if optional:
            return None
        raise row.error("missing field", field=name, reason="missing_field")
    value = obj[key]
    if value is None and (nullable or optional):
        return None
    numeric = types in (int, float) or (isinstance(types, tuple) and set(types) <= {int, float})
    if not isinstance(value, types) or (numeric and isinstance(value, bool)):
        raise row.error(
            f"expected {_type_name(types)}, got {type(value).__name__} ({value!r:.40})",
            field=name,
            reason="wrong_type",
        )
    return value


def get_number(row: Row, obj: Any, key: str, *, path: str = "", nullable: bool = False):
    """A JSON number (``int`` or ``float``, not ``bool``) as ``float``."""
    value = get(row, obj, key, (int, float), path=path, nullable=nullable)
    return None if value is None else float(value)


def expect_mapping(row: Row) -> Mapping[str, Any]:
    if not isinstance(row.data, Mapping):
        raise row.error(
            f"expected a JSON object, got {type(row.data).__name__}", reason="wrong_type"
        )
    return row.data


def process_each(
    rows: Iterable[Row], collector: RecordCollector, handle: Callable[[Row], None]
) -> None:
    """Run ``handle`` on every row; format errors go to ``collector.skip`` (raise or count)."""
    for row in rows:
        collector.summary.rows_read += 1
        try:
            handle(row)
        except DataFormatError as err:
            collector.skip(err)


def hub_rows(dataset: Iterable[Mapping[str, Any]], label: str, hint: str | None) -> Iterator[Row]:
    """Rows of a ``datasets`` split, numbered from 1."""
    for i, data in enumerate(dataset, start=1):
        yield Row(label, i, dict(data), unit="row", hint=hint)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """``ValueError`` naming the option when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
