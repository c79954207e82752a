"""Preference / completion records, load accounting, and conversions to TRL and ``datasets``.

``Preference`` and ``Completion`` are owned by :mod:`oodpl.core.records` (both ``oodpl.data`` and
``oodpl.models`` need them) and re-exported here.

Validation policy (applied by :class:`RecordCollector`, which every loader uses):

- a field of the wrong type is a *format* problem: ``DataFormatError`` naming file, line and
  field, or with ``lenient=True`` a skipped row counted in ``LoadSummary.skipped``;
- an empty (or whitespace-only) text field, or ``chosen == rejected``, is an *invalid record*:
  with ``on_invalid="error"`` (default) a ``DataFormatError``; with ``on_invalid="drop"`` the
  record is dropped and counted in ``LoadSummary.dropped`` (``"empty_field:<name>"``,
  ``"identical_chosen_rejected"``);
- rows left out by design (ties, score-ratio filters, other domains or splits) are counted in
  ``LoadSummary.filtered``. Nothing is dropped without a count.

Column layout of :func:`to_dataset`: ``prompt, chosen, rejected, domain, source, meta`` for
preferences and ``prompt, response, domain, source, meta`` for completions, where ``meta`` holds
JSON text (heterogeneous dicts do not fit one Arrow schema).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from oodpl.core.records import Completion, Preference
from oodpl.data.errors import DataFormatError
from oodpl.data.io import Row

__all__ = [
    "Completion",
    "LoadResult",
    "LoadSummary",
    "OnInvalid",
    "Preference",
    "RecordCollector",
    "from_dataset",
    "from_trl_rows",
    "to_dataset",
    "to_trl_rows",
]

OnInvalid = Literal["error", "drop"]
Record = Preference | Completion

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "domain", "source", "meta")
COMPLETION_COLUMNS = ("prompt", "response", "domain", "source", "meta")


@dataclass
class LoadSummary:
    """What a load read, kept, and left out, with a count per reason.

    ``skipped``: rows with format problems under ``lenient=True`` (``reason[:field]`` keys);
    ``dropped``: invalid records under ``on_invalid="drop"``; ``filtered``: rows left out by
    design (ties, filters, other domains/splits); ``per_domain``: records kept per domain.
    """

    source: str = ""
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    records: int = 0
    per_domain: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def n_filtered(self) -> int:
        return sum(self.filtered.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files": list(self.files),
            "rows_read": self.rows_read,
            "records": self.records,
            "per_domain": dict(sorted(self.per_domain.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "filtered": dict(sorted(self.filtered.items())),
        }

    def describe(self) -> str:
        """A short multi-line text for logs and the CLI."""
        lines = [
            f"{self.source or 'data'}: {self.records} records from {self.rows_read} rows "
            f"in {len(self.files)} file(s)"
        ]
        for title, counts in (
            ("per domain", self.per_domain),
            ("filtered", self.filtered),
            ("dropped (invalid)", self.dropped),
            ("skipped (format)", self.skipped),
        ):
            if counts:
                body = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                lines.append(f"  {title}: {body}")
        return "\n".join(lines)


@dataclass
class LoadResult(Sequence):
    """Records plus their :class:`LoadSummary`; behaves as a read-only list of the records."""

    records: list[Record]
    summary: LoadSummary

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...
    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def domains(self) -> list[str]:
        """Domains present, sorted."""
        return sorted(self.summary.per_domain)


class RecordCollector:
    """Builds records from rows under one validation policy and keeps the accounting.

    ``domains``: when given, records of other domains are counted as ``filtered["other_domain"]``
    instead of kept. ``lenient``: format errors passed to :meth:`skip` are counted rather than
    raised. ``on_invalid``: what to do with empty fields and identical chosen/rejected.
    """

    def __init__(
        self,
        source: str = "",
        *,
        domains: Iterable[str] | None = None,
        lenient: bool = False,
        on_invalid: OnInvalid = "error",
    ) -> None:
        if on_invalid not in ("error", "drop"):
            raise ValueError(f"on_invalid: expected 'error' or 'drop', got {on_invalid!r}")
        if not isinstance(lenient, bool):
            raise TypeError(f"lenient: expected a bool, got {type(lenient).__name__}")
        self.domains = None if domains is None else frozenset(domains)
        self.lenient = lenient
        self.on_invalid = on_invalid
        self.summary = LoadSummary(source=source)
        self.records: list[Record] = []

    # -- accounting -------------------------------------------------------------------------
    def skip(self, err: DataFormatError) -> None:
        """A format problem: raise it, or count it under ``err.skip_key`` when lenient."""
        if not self.lenient:
            raise err
        self.summary.skipped[err.skip_key] += 1

    def filter(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows left out by design under ``reason``."""
        if n:
            self.summary.filtered[reason] += n

    def add_file(self, path: object) -> None:
        self.summary.files.append(str(path))

    def wants(self, domain: str) -> bool:
        """Whether records of ``domain`` are requested; counts ``other_domain`` if not."""
        if self.domains is None or domain in self.domains:
            return True
        self.filter("other_domain")
        return False

    def result(self) -> LoadResult:
        return LoadResult(self.records, self.summary)

    # -- records ----------------------------------------------------------------------------
    def _invalid(self, row: Row | None, key: str, detail: str, field_name: str | None) -> None:
        if self.on_invalid == "drop":
            self.summary.dropped[key] += 1
            return
        reason = key.split(":", 1)[0]
        if row is None:
            raise DataFormatError(detail, field=field_name, reason=reason)
        raise row.error(
            detail + " (pass on_invalid='drop' to drop and count such records)",
            field=field_name,
            reason=reason,
        )

    def _check_texts(self, row: Row | None, values: Mapping[str, object]) -> bool:
        for name, value in values.items():
            if not isinstance(value, str):
                err = DataFormatError(
                    f"expected a string, got {type(value).__name__}",
                    field=name,
                    reason="wrong_type",
                )
                if row is not None:
                    err = row.error(err.detail, field=name, reason="wrong_type")
                self.skip(err)
                return False
        for name, value in values.items():
            if not value.strip():  # type: ignore[union-attr]
                self._invalid(row, f"empty_field:{name}", "empty text", name)
                return False
        return True

    def add_preference(
        self,
        row: Row | None,
        *,
        prompt: object,
        chosen: object,
        rejected: object,
        domain: str,
        source: str,
        meta: Mapping[str, Any] | None = None,
    ) -> Preference | None:
        """Validate and keep one preference; returns it, or ``None`` if filtered/dropped/skipped."""
        texts = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "domain": domain}
        if not self._check_texts(row, texts):
            return None
        if chosen == rejected:
            self._invalid(
                row, "identical_chosen_rejected", "chosen and rejected are identical", "chosen"
            )
            return None
        if not self.wants(domain):
            return None
        record = Preference(prompt, chosen, rejected, domain, source, meta or {})  # type: ignore[arg-type]
        self._keep(record)
        return record

    def add_completion(
        self,
        row: Row | None,
        *,
        prompt: object,
        response: object,
        domain: str,
        source: str,
        meta: Mapping[str, Any] | None = None,
    ) -> Completion | None:
        """Validate and keep one completion; returns it, or ``None`` if filtered/dropped/skipped."""
        if not self._check_texts(row, {"prompt": prompt, "response": response, "domain": domain}):
            return None
        if not self.wants(domain):
            return None
        record = Completion(prompt, response, domain, source, meta or {})  # type: ignore[arg-type]
        self._keep(record)
        return record

    def _keep(self, record: Record) -> None:
        self.records.append(record)
        self.summary.records += 1
        self.summary.per_domain[record.domain] += 1


# -- conversions ----------------------------------------------------------------------------


def _kind_of(records: Sequence[Record], kind: str | None) -> str:
    kinds = {type(r) for r in records}
    if len(kinds) > 1:
        raise TypeError("records: mixes Preference and Completion; convert them separately")
    if kinds:
        only = kinds.pop()
        if only is Preference:
            return "preference"
        if only is Completion:
            return "completion"
        raise TypeError(f"records: expected Preference or Completion, got {only.__name__}")
    if kind not in ("preference", "completion"):
        raise ValueError("kind: records is empty; pass kind='preference' or 'completion'")
    return kind


def to_trl_rows(records: Iterable[Record], *, with_domain: bool = False) -> list[dict[str, str]]:
    """TRL columns: ``prompt/chosen/rejected`` (preferences) or ``prompt/completion`` (completions).

    ``with_domain`` adds ``domain`` and ``source`` columns (TRL ignores extra columns).
    """
    records = list(records)
    kind = _kind_of(records, "preference")
    rows = []
    for r in records:
        if kind == "preference":
            row = r.to_trl()  # type: ignore[union-attr]
        else:  # TRL's prompt-completion format
            row = {"prompt": r.prompt}
            row["completion"] = r.response  # type: ignore[union-attr]
        if with_domain:
            row["domain"], row["source"] = r.domain, r.source
        rows.append(row)
    return rows


def to_dataset(records: Iterable[Record], *, kind: str | None = None):
    """A ``datasets.Dataset`` with the columns in the module docstring (``meta`` as JSON text)."""
    import datasets

    records = list(records)
    kind = _kind_of(records, kind)
    columns = PREFERENCE_COLUMNS if kind == "preference" else COMPLETION_COLUMNS
    data: dict[str, list[str]] = {c: [] for c in columns}
    for r in records:
        d = r.to_dict()
        for c in columns:
            data[c].append(json.dumps(d[c], sort_keys=True, default=str) if c == "meta" else d[c])
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    return datasets.Dataset.from_dict(data, features=features)


def from_dataset(
    ds: Iterable[Mapping[str, Any]],
    *,
    domain: str | None = None,
    source: str | None = None,
    kind: str | None = None,
    on_invalid: OnInvalid = "error",
    lenient: bool = False,
    name: str = "<dataset>",
) -> LoadResult:
    """Records from a ``datasets.Dataset`` (or any iterable of row mappings).

    Reads the columns of :func:`to_dataset` and TRL's preference formats: explicit prompt
    (``prompt/chosen/rejected``), implicit prompt (``chosen/rejected`` holding the whole
    dialogue), and conversational (lists of ``{"role","content"}`` messages). ``domain`` /
    ``source`` fill in for a missing column; other columns go into ``meta``. ``kind``
    (``"preference"``/``"completion"``) is inferred from the columns when omitted.
    """
    from oodpl.data.sources.trl import rows_to_result

    return rows_to_result(
        ds,
        name=name,
        domain=domain,
        source=source,
        kind=kind,
        on_invalid=on_invalid,
        lenient=lenient,
    )


def from_trl_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    domain: str,
    source: str = "",
    on_invalid: OnInvalid = "error",
    lenient: bool = False,
) -> LoadResult:
    """Preferences from TRL ``prompt/chosen/rejected`` rows (completions: ``prompt/completion``)."""
    if not isinstance(domain, str) or not domain.strip():
        raise ValueError("domain: a non-empty domain name is required")
    from oodpl.data.sources.trl import rows_to_result

    return rows_to_result(
        rows,
        name="<trl rows>",
        domain=domain,
        source=source,
        kind=None,
        on_invalid=on_invalid,
        lenient=lenient,
    )
