"""Reading upstream data files with errors that name the file, line and field.

Formats (decided by the file name; ``.gz`` is decompressed transparently):

- ``.jsonl``: one JSON value per line (blank lines are ignored);
- ``.json``: either one JSON array of values, or JSON lines (SHP and the OpenAI comparison
  files ship JSON lines under a ``.json`` name), or a single JSON value; decided by the content;
- ``.parquet``: rows as Python dicts (nested structs become dicts, lists stay lists);
- ``.csv``: rows as ``{header: text}`` dicts.

Every reader yields :class:`Row` objects carrying ``path`` and a 1-based ``line`` (the line the
value starts on; for parquet the row number, with ``unit="row"``). Problems raise
:class:`~oodpl.data.errors.DataFormatError`; a reader given ``on_error`` calls it instead and
goes on with the next row where that is possible (a truncated or corrupt file ends the file).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, TextIO

from oodpl.data.errors import DataFormatError

ErrorHandler = Callable[[DataFormatError], None]

#: Suffixes :func:`iter_rows` understands, after an optional ``.gz``.
ROW_FORMATS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class Row:
    """One value read from a file: where it came from and the decoded data.

    ``hint`` carries what the file's place in the upstream layout says about the row (for
    example the SHP subreddit directory or the HH-RLHF subset it was found in).
    """

    path: str
    line: int | None
    data: Any
    unit: str = "line"
    hint: str | None = None

    def error(self, detail: str, *, field: str | None = None, reason: str = "bad_value"):
        """A :class:`DataFormatError` located at this row."""
        return DataFormatError(
            detail, path=self.path, line=self.line, field=field, reason=reason, unit=self.unit
        )


def _raise(err: DataFormatError) -> None:
    raise err


def base_suffix(path: str | PathLike[str]) -> str:
    """The format suffix of ``path`` without a trailing ``.gz`` (``a.jsonl.gz`` -> ``.jsonl``)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def is_gzip(path: str | PathLike[str]) -> bool:
    return Path(path).name.lower().endswith(".gz")


def open_text(path: str | PathLike[str], encoding: str = "utf-8") -> TextIO:
    """Open a plain or gzipped text file for reading."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no such file {str(p)!r}")
    if is_gzip(p):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding=encoding, newline="")
    return open(p, encoding=encoding, newline="")


def iter_lines(
    path: str | PathLike[str], *, on_error: ErrorHandler | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, without its newline.

    A truncated gzip stream raises ``DataFormatError(reason="truncated_file")`` naming the line
    at which reading stopped; undecodable bytes raise ``reason="encoding"``.
    """
    handle = on_error or _raise
    line_no = 0
    try:
        with open_text(path) as fh:
            for line_no, text in enumerate(fh, start=1):
                yield line_no, text.rstrip("\r\n")
    except EOFError:
        handle(
            DataFormatError(
                "compressed file ended before the end-of-stream marker (truncated download?)",
                path=path,
                line=line_no + 1,
                reason="truncated_file",
            )
        )
    except (gzip.BadGzipFile, zlib.error) as exc:
        handle(
            DataFormatError(
                f"not a valid gzip stream ({exc})",
                path=path,
                line=line_no + 1,
                reason="corrupt_file",
            )
        )
    except UnicodeDecodeError as exc:
        handle(
            DataFormatError(
                f"not UTF-8 text ({exc.reason})", path=path, line=line_no + 1, reason="encoding"
            )
        )


def _empty_file(path: str | PathLike[str]) -> DataFormatError:
    return DataFormatError("file holds no data rows", path=path, reason="empty_file")


def iter_jsonl(path: str | PathLike[str], *, on_error: ErrorHandler | None = None) -> Iterator[Row]:
    """Yield one :class:`Row` per non-blank line of a JSON-lines file."""
    handle = on_error or _raise
    n_rows = 0
    n_bad = 0
    for line_no, text in iter_lines(path, on_error=on_error):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            n_bad += 1
            handle(
                DataFormatError(
                    f"malformed JSON ({exc.msg} at column {exc.colno})",
                    path=path,
                    line=line_no,
                    reason="malformed_json",
                )
            )
            continue
        n_rows += 1
        yield Row(str(path), line_no, value)
    if n_rows == 0 and n_bad == 0:
        handle(_empty_file(path))


def _read_all_text(path: str | PathLike[str], on_error: ErrorHandler | None) -> str | None:
    parts = []
    ok = True

    def note(err: DataFormatError) -> None:
        nonlocal ok
        ok = False
        (on_error or _raise)(err)

    for _, text in iter_lines(path, on_error=note):
        parts.append(text)
    return "\n".join(parts) if ok or parts else None


def _iter_json_array(path: str | PathLike[str], text: str, handle: ErrorHandler) -> Iterator[Row]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    counted_to = pos
    n = len(text)
    expect_value = True
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            handle(
                DataFormatError(
                    "JSON array is not closed", path=path, line=line, reason="malformed_json"
                )
            )
            return
        if text[pos] == "]":
            return
        if not expect_value:
            if text[pos] != ",":
                line += text.count("\n", counted_to, pos)
                handle(
                    DataFormatError(
                        "malformed JSON (expected ',' or ']')",
                        path=path,
                        line=line,
                        reason="malformed_json",
                    )
                )
                return
            pos += 1
            expect_value = True
            continue
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            handle(
                DataFormatError(
                    f"malformed JSON ({exc.msg})",
                    path=path,
                    line=exc.lineno,
                    reason="malformed_json",
                )
            )
            return
        yield Row(str(path), line, value)
        pos = end
        expect_value = False


def iter_json(path: str | PathLike[str], *, on_error: ErrorHandler | None = None) -> Iterator[Row]:
    """Yield the values of a ``.json`` file: a JSON array, JSON lines, or a single value."""
    handle = on_error or _raise
    with open_text(path) as fh:
        try:
            head = fh.read(4096)
        except (EOFError, OSError, zlib.error, UnicodeDecodeError):
            head = "{"  # let the line reader report the precise problem
    stripped = head.lstrip()
    if not stripped:
        yield from iter_jsonl(path, on_error=on_error)  # reports empty_file or the real error
        return
    if stripped[0] == "[":
        text = _read_all_text(path, on_error)
        if text is None:
            return
        rows = list(_iter_json_array(path, text, handle))
        if not rows:
            handle(_empty_file(path))
        yield from rows
        return
    # JSON lines, unless the first line alone is not valid JSON but the whole file is one value.
    first_line = stripped.split("\n", 1)[0]
    try:
        json.loads(first_line)
    except json.JSONDecodeError:
        text = _read_all_text(path, on_error)
        if text is not None:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                pass
            else:
                yield Row(str(path), 1, value)
                return
    yield from iter_jsonl(path, on_error=on_error)


def iter_parquet(
    path: str | PathLike[str], *, on_error: ErrorHandler | None = None, batch_size: int = 512
) -> Iterator[Row]:
    """Yield the rows of a parquet file as dicts (``unit="row"``, 1-based row numbers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = on_error or _raise
    if not Path(path).is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    row_no = 0
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_size):
            for data in batch.to_pylist():
                row_no += 1
                yield Row(str(path), row_no, data, unit="row")
    except (pa.ArrowException, OSError) as exc:
        handle(
            DataFormatError(
                f"unreadable parquet ({exc})",
                path=path,
                line=row_no + 1 if row_no else None,
                reason="corrupt_file",
                unit="row",
            )
        )
        return
    if row_no == 0:
        handle(_empty_file(path))


def iter_csv(path: str | PathLike[str], *, on_error: ErrorHandler | None = None) -> Iterator[Row]:
    """Yield ``{header: text}`` rows of a CSV file; ``line`` is the line the record starts on."""
    handle = on_error or _raise
    lines = iter_lines(path, on_error=on_error)
    # csv needs an iterator of lines with their newlines; track where each record starts.
    current = {"line": 0}

    def feed() -> Iterator[str]:
        for line_no, text in lines:
            current["line"] = line_no
            yield text + "\n"

    reader = csv.reader(feed())
    try:
        header = next(reader)
    except StopIteration:
        handle(_empty_file(path))
        return
    except csv.Error as exc:
        handle(DataFormatError(f"malformed CSV ({exc})", path=path, line=1, reason="malformed_csv"))
        return
    n_rows = 0
    start = current["line"] + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            handle(
                DataFormatError(
                    f"malformed CSV ({exc})", path=path, line=start, reason="malformed_csv"
                )
            )
            start = current["line"] + 1
            continue
        line_no, start = start, current["line"] + 1
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            handle(
                DataFormatError(
                    f"expected {len(header)} fields (header {header}), found {len(values)}",
                    path=path,
                    line=line_no,
                    reason="malformed_csv",
                )
            )
            continue
        n_rows += 1
        yield Row(str(path), line_no, dict(zip(header, values, strict=True)))
    if n_rows == 0:
        handle(_empty_file(path))


def iter_rows(path: str | PathLike[str], *, on_error: ErrorHandler | None = None) -> Iterator[Row]:
    """Rows of ``path``, by its name: ``.jsonl``/``.json``/``.parquet``/``.csv`` (maybe ``.gz``)."""
    suffix = base_suffix(path)
    if suffix == ".jsonl":
        return iter_jsonl(path, on_error=on_error)
    if suffix == ".json":
        return iter_json(path, on_error=on_error)
    if suffix == ".parquet":
        return iter_parquet(path, on_error=on_error)
    if suffix == ".csv":
        return iter_csv(path, on_error=on_error)
    raise DataFormatError(
        f"unsupported file type {suffix or '(none)'!r}; expected one of {ROW_FORMATS} "
        "(optionally .gz)",
        path=path,
        reason="bad_value",
    )


def read_text(path: str | PathLike[str], encodings: tuple[str, ...] = ("utf-8", "latin-1")) -> str:
    """Whole text of a plain or gzipped file, trying ``encodings`` in turn (latin-1 never fails)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no such file {str(p)!r}")
    try:
        raw = gzip.decompress(p.read_bytes()) if is_gzip(p) else p.read_bytes()
    except EOFError as exc:
        raise DataFormatError(
            "compressed file ended before the end-of-stream marker (truncated download?)",
            path=p,
            reason="truncated_file",
        ) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            f"not a valid gzip stream ({exc})", path=p, reason="corrupt_file"
        ) from exc
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataFormatError(f"text is not in any of {encodings}", path=p, reason="encoding")


def write_jsonl(rows: Any, path: str | PathLike[str]) -> Path:
    """Write JSON-serialisable values as JSON lines (gzipped if ``path`` ends with ``.gz``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if is_gzip(p) else open
    with opener(p, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p
