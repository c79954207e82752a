"""Errors raised while reading preference data.

Every problem with a file is reported as a :class:`DataFormatError` (a ``ValueError``) that names
the file, the line (or row, for parquet and ``datasets`` rows) and the field, plus a short
machine-readable ``reason`` under which lenient loading counts skipped rows
(``LoadSummary.skipped``), e.g. ``"malformed_json"``, ``"missing_field"``, ``"wrong_type"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike

#: Reasons a row or file can be rejected; lenient loading counts skips under these keys.
REASONS = (
    "malformed_json",
    "malformed_csv",
    "malformed_review",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_domain",
    "empty_file",
    "truncated_file",
    "corrupt_file",
    "encoding",
    "empty_field",
    "identical_chosen_rejected",
    "missing_parent",
)


class DataFormatError(ValueError):
    """A file (or ``datasets`` row) does not match the layout its loader expects.

    Attributes: ``path`` (file or dataset name), ``line`` (1-based line, or row number when
    ``unit == "row"``; ``None`` for whole-file problems), ``field`` (dotted field name or
    ``None``), ``reason`` (one of :data:`REASONS`) and ``detail`` (the human message alone).
    """

    def __init__(
        self,
        detail: str,
        *,
        path: str | PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
        reason: str = "bad_value",
        unit: str = "line",
    ) -> None:
        self.detail = detail
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = reason
        self.unit = unit
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail

    @property
    def skip_key(self) -> str:
        """The key lenient loading counts this error under: ``reason`` or ``reason:field``."""
        return f"{self.reason}:{self.field}" if self.field else self.reason


class UnknownSourceError(ValueError):
    """``load(name)`` was given a name no source is registered under."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(f"unknown data source {name!r}; known sources: {', '.join(self.known)}")


class UnknownDomainError(ValueError):
    """A ``domains=[...]`` argument names a domain the source does not have."""

    def __init__(self, source: str, unknown: Iterable[str], known: Iterable[str]) -> None:
        self.source = source
        self.unknown = tuple(unknown)
        self.known = tuple(known)
        super().__init__(
            f"domains: unknown domain(s) {list(self.unknown)} for source {source!r}; "
            f"known domains: {', '.join(self.known)}"
        )
