"""CSG pairs: the LLM-generated sentiment preference pairs our labeller writes.

**CSG pairs format** (what ``oodpl.data.labelling`` writes and this module reads): JSON lines,
UTF-8, optionally gzipped (``*.jsonl`` / ``*.jsonl.gz``), one object per line with exactly these
keys ::

    {"prompt": str,    # the shared review prefix the two reviews continue
     "chosen": str,    # the continuation judged more positive (the preferred one)
     "rejected": str,  # the less-positive continuation
     "domain": str,    # one of "books", "dvd", "electronics", "kitchen"
     "source": str,    # optional, default "csg-pairs"; e.g. "csg-llm:<model name>"
     "meta": {...}}    # optional JSON object, e.g. {"sentiment": "positive",
                       #   "review_id": "...", "judge_model": "...", "template": "..."}

``prompt``, ``chosen``, ``rejected`` and ``domain`` are required non-empty strings and
``chosen != rejected``; unknown keys are an error (so a misspelt key is caught). ``path`` is one
file or a directory of ``*.jsonl`` / ``*.jsonl.gz`` files (read in name order). CSV (``meta`` as
JSON text) and parquet files with the same columns are read too. :func:`write_csg_pairs` writes
the format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path

from oodpl.core.records import Preference
from oodpl.data.io import Row, write_jsonl
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import (
    SourceSpec,
    data_files,
    expect_mapping,
    file_rows,
    get,
    process_each,
)
from oodpl.data.sources.amazon import AMAZON_DOMAINS

CSG_DOMAINS = AMAZON_DOMAINS
CSG_PAIR_KEYS = ("prompt", "chosen", "rejected", "domain", "source", "meta")
REQUIRED_KEYS = ("prompt", "chosen", "rejected", "domain")
DEFAULT_SOURCE = "csg-pairs"
SOURCE = "csg-pairs"


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str | None,
    **_options: object,
) -> Iterable[Row]:
    files = data_files(path, ["*.jsonl", "*.jsonl.gz", "*.csv", "*.parquet"], what="CSG pair files")
    return file_rows([(f, None) for f in files], collector)


def process(rows: Iterable[Row], collector: RecordCollector, *, split: str | None = None) -> None:
    def handle(row: Row) -> None:
        data = expect_mapping(row)
        unknown = sorted(set(data) - set(CSG_PAIR_KEYS))
        if unknown:
            raise row.error(
                f"unknown key(s) {unknown}; the CSG pairs format has {list(CSG_PAIR_KEYS)}",
                field=unknown[0],
                reason="bad_value",
            )
        values = {k: get(row, data, k, str) for k in REQUIRED_KEYS}
        if values["domain"] not in CSG_DOMAINS:
            raise row.error(
                f"unknown domain {values['domain']!r}; expected one of {list(CSG_DOMAINS)}",
                field="domain",
                reason="unknown_domain",
            )
        source = get(row, data, "source", str, optional=True) or DEFAULT_SOURCE
        meta = data.get("meta")
        if isinstance(meta, str):  # CSV stores meta as JSON text
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except json.JSONDecodeError:
                raise row.error(
                    "expected JSON text of an object", field="meta", reason="wrong_type"
                ) from None
        if meta is not None and not isinstance(meta, Mapping):
            raise row.error(
                f"expected an object, got {type(meta).__name__}", field="meta", reason="wrong_type"
            )
        collector.add_preference(row, source=source, meta=meta, **values)

    process_each(rows, collector, handle)


def pair_row(record: Preference) -> dict:
    """One line of the CSG pairs format for ``record`` (domain must be a CSG domain)."""
    if record.domain not in CSG_DOMAINS:
        raise ValueError(f"record.domain: {record.domain!r} is not one of {list(CSG_DOMAINS)}")
    return {
        "prompt": record.prompt,
        "chosen": record.chosen,
        "rejected": record.rejected,
        "domain": record.domain,
        "source": record.source or DEFAULT_SOURCE,
        "meta": dict(record.meta),
    }


def write_csg_pairs(records: Iterable[Preference], path: str | PathLike[str]) -> Path:
    """Write preferences in the CSG pairs format (gzipped when ``path`` ends with ``.gz``)."""
    rows_out = [pair_row(r) for r in records]  # validate everything before writing
    return write_jsonl(rows_out, path)


SPEC = SourceSpec(
    name=SOURCE,
    description="LLM-generated controlled-sentiment (CSG) preference pairs written by "
    "oodpl.data.labelling",
    domains=CSG_DOMAINS,
    record_type="preference",
    path_hint="a *.jsonl(.gz) file or a directory of them (CSG pairs format)",
    hub_id=None,
    splits=(),
    default_split=None,
    rows=rows,
    process=process,
    aliases=("csg", "csg_pairs"),
)
