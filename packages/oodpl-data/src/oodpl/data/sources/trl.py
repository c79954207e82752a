"""Preference / completion files in the column layouts TRL and ``datasets`` use (any domain).

Rows (JSON lines, JSON, parquet or CSV files; or ``datasets`` rows via
:func:`oodpl.data.records.from_dataset`) may hold:

- explicit prompt: ``prompt``, ``chosen``, ``rejected`` as text;
- implicit prompt: ``chosen`` and ``rejected`` only, each a whole HH-style dialogue; the prompt is
  the shared history up to the last common ``"\\n\\nAssistant:"``;
- conversational: any of these as message lists ``[{"role", "content"}, ...]`` (TRL's
  conversational format); the reply is the final assistant message;
- completions: ``prompt`` with ``response`` (our column) or ``completion`` (TRL's).

``domain``/``source`` columns win over the ``domain=``/``source=`` options, which fill in when a
column is missing or null; ``meta`` may be an object or JSON text; all other columns are kept in
``meta``. A file's kind (preference or completion) is fixed by its first row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from oodpl.data.errors import DataFormatError
from oodpl.data.io import Row
from oodpl.data.records import LoadResult, OnInvalid, RecordCollector
from oodpl.data.sources._common import SourceSpec, data_files, file_rows
from oodpl.data.sources._dialogue import (
    message_turns,
    render_prompt,
    split_conversation,
    split_shared_prefix,
)

KNOWN_COLUMNS = {
    "prompt",
    "chosen",
    "rejected",
    "response",
    "completion",
    "domain",
    "source",
    "meta",
}
SOURCE = "trl"


def _decode_meta(row: Row, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    raise row.error("expected a JSON object or JSON text of one", field="meta", reason="wrong_type")


def _text_or_turns(row: Row, name: str, value: Any) -> tuple[str | None, list | None]:
    if isinstance(value, str):
        return value, None
    try:
        return None, message_turns(value, what=name)
    except (TypeError, ValueError) as exc:
        raise row.error(str(exc), field=name, reason="wrong_type") from None


def _prompt_text(row: Row, value: Any) -> str:
    text, turns = _text_or_turns(row, "prompt", value)
    if turns is None:
        return text  # type: ignore[return-value]
    try:
        return render_prompt(turns)
    except ValueError as exc:
        raise row.error(str(exc), field="prompt", reason="bad_value") from None


def _require(row: Row, data: Mapping, name: str) -> Any:
    if name not in data:
        raise row.error("missing column", field=name, reason="missing_field")
    return data[name]


def _last_reply(turns: list) -> str:
    return turns[-1][1] if turns else ""


def row_to_record(
    row: Row, c: RecordCollector, kind: str, domain: str | None, source: str | None
) -> None:
    """Add the record ``row`` holds to ``c`` (see the module docstring for the layouts)."""
    data = row.data
    if not isinstance(data, Mapping):
        raise row.error(f"expected a mapping, got {type(data).__name__}", reason="wrong_type")
    dom = data["domain"] if data.get("domain") is not None else domain
    if dom is None:
        raise row.error(
            "no domain column and no domain= given", field="domain", reason="missing_field"
        )
    src = data["source"] if data.get("source") is not None else (source or "")
    meta = _decode_meta(row, data.get("meta"))
    meta.update({k: v for k, v in data.items() if k not in KNOWN_COLUMNS})
    if kind == "completion":
        prompt = _prompt_text(row, _require(row, data, "prompt"))
        key = "response" if "response" in data else "completion"
        response, turns = _text_or_turns(row, key, _require(row, data, key))
        if turns is not None:
            response = _last_reply(turns)
        c.add_completion(row, prompt=prompt, response=response, domain=dom, source=src, meta=meta)
        return
    chosen, c_turns = _text_or_turns(row, "chosen", _require(row, data, "chosen"))
    rejected, r_turns = _text_or_turns(row, "rejected", _require(row, data, "rejected"))
    if (c_turns is None) != (r_turns is None):
        raise row.error(
            "chosen and rejected must both be text or both be messages",
            field="rejected",
            reason="wrong_type",
        )
    if data.get("prompt") is None:  # implicit prompt: split the shared history
        try:
            if c_turns is not None:
                prompt, chosen, rejected = split_conversation(c_turns, r_turns)  # type: ignore[arg-type]
            else:
                prompt, chosen, rejected = split_shared_prefix(chosen, rejected)  # type: ignore[arg-type]
        except ValueError as exc:
            raise row.error(
                f"no prompt column, and {exc}", field="prompt", reason="missing_field"
            ) from None
    else:
        prompt = _prompt_text(row, data["prompt"])
        if c_turns is not None:
            chosen, rejected = _last_reply(c_turns), _last_reply(r_turns)  # type: ignore[arg-type]
    c.add_preference(
        row, prompt=prompt, chosen=chosen, rejected=rejected, domain=dom, source=src, meta=meta
    )


def _kind_of_row(data: Any) -> str:
    keys = set(data) if isinstance(data, Mapping) else set()
    return "preference" if {"chosen", "rejected"} & keys else "completion"


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    domain: str | None = None,
    source: str | None = None,
    kind: str | None = None,
) -> None:
    if kind not in (None, "preference", "completion"):
        raise ValueError(f"kind: expected 'preference', 'completion' or None, got {kind!r}")
    for row in rows:
        collector.summary.rows_read += 1
        if kind is None:
            kind = _kind_of_row(row.data)
        try:
            row_to_record(row, collector, kind, domain, source)
        except DataFormatError as err:
            collector.skip(err)


def rows_to_result(
    rows: Iterable[Any],
    *,
    name: str,
    domain: str | None,
    source: str | None,
    kind: str | None,
    on_invalid: OnInvalid,
    lenient: bool,
) -> LoadResult:
    """Records from in-memory row mappings (``datasets`` rows, TRL dicts), numbered from 1."""
    collector = RecordCollector(source or name, lenient=lenient, on_invalid=on_invalid)
    collector.add_file(name)
    numbered = (Row(name, i, data, unit="row") for i, data in enumerate(rows, start=1))
    process(numbered, collector, domain=domain, source=source, kind=kind)
    return collector.result()


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str | None,
    **_options: object,
) -> Iterable[Row]:
    files = data_files(
        path, ["*.jsonl", "*.jsonl.gz", "*.json", "*.parquet", "*.csv"], what="preference files"
    )
    return file_rows([(f, None) for f in files], collector)


SPEC = SourceSpec(
    name=SOURCE,
    description="Your own preference/completion files in TRL or datasets columns (any domain)",
    domains=(),
    record_type="preference or completion",
    path_hint="a .jsonl/.json/.parquet/.csv file (or a directory of them) with prompt/chosen/"
    "rejected (or prompt/response) and a domain column or domain= option",
    hub_id=None,
    splits=(),
    default_split=None,
    rows=rows,
    process=process,
    options={"domain": None, "source": None, "kind": None},
    open_domains=True,
    aliases=("preference-file", "jsonl"),
)
