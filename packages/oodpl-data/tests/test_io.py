"""File readers: every format, and errors that name the file, line and reason."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oodpl.data.errors import DataFormatError
from oodpl.data.io import (
    base_suffix,
    iter_csv,
    iter_json,
    iter_jsonl,
    iter_parquet,
    iter_rows,
    read_text,
    write_jsonl,
)


def collect(it):
    errors = []
    rows = list(it(errors.append))
    return rows, errors


def test_error_message_names_path_line_and_field():
    err = DataFormatError("bad", path="a/b.jsonl", line=7, field="chosen", reason="wrong_type")
    assert isinstance(err, ValueError)
    assert str(err) == "a/b.jsonl, line 7, field 'chosen': bad"
    assert (err.path, err.line, err.field, err.skip_key) == (
        "a/b.jsonl",
        7,
        "chosen",
        "wrong_type:chosen",
    )
    assert str(DataFormatError("x", path="p.parquet", line=3, unit="row")) == "p.parquet, row 3: x"


def test_base_suffix_strips_gz():
    assert base_suffix("x/train.jsonl.gz") == ".jsonl"
    assert base_suffix("rlaif.parquet") == ".parquet"
    assert base_suffix("t.JSON") == ".json"


def test_jsonl_line_numbers_skip_blank_lines(tmp_path, raw_lines):
    path = raw_lines(tmp_path / "a.jsonl", ['{"a": 1}', "", "  ", '{"a": 2}'])
    rows = list(iter_jsonl(path))
    assert [(r.line, r.data) for r in rows] == [(1, {"a": 1}), (4, {"a": 2})]
    assert rows[0].path == str(path)


def test_jsonl_malformed_line_raises_with_line(tmp_path, raw_lines):
    path = raw_lines(tmp_path / "a.jsonl", ['{"a": 1}', '{"a": ', '{"a": 3}'])
    with pytest.raises(DataFormatError) as info:
        list(iter_jsonl(path))
    assert (info.value.line, info.value.reason) == (2, "malformed_json")
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_jsonl_on_error_skips_and_continues(tmp_path, raw_lines):
    path = raw_lines(tmp_path / "a.jsonl", ['{"a": 1}', "not json", '{"a": 3}'])
    rows, errors = collect(lambda h: iter_jsonl(path, on_error=h))
    assert [r.data["a"] for r in rows] == [1, 3]
    assert [(e.line, e.reason) for e in errors] == [(2, "malformed_json")]


def test_gzip_is_transparent(tmp_path, raw_lines):
    path = raw_lines(tmp_path / "a.jsonl.gz", ['{"a": 1}', '{"a": 2}'])
    assert [r.data for r in iter_rows(path)] == [{"a": 1}, {"a": 2}]


def test_truncated_gzip_names_file_and_line(tmp_path):
    lines = [json.dumps({"i": i, "text": "x" * 50 + str(i * 7919)}) for i in range(400)]
    blob = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError) as info:
        list(iter_jsonl(path))
    assert info.value.reason == "truncated_file"
    assert info.value.path == str(path) and info.value.line is not None
    rows, errors = collect(lambda h: iter_jsonl(path, on_error=h))
    assert 0 < len(rows) < 400 and [e.reason for e in errors] == ["truncated_file"]
    assert errors[0].line == rows[-1].line + 1


def test_not_gzip_is_corrupt(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(b'{"a": 1}\n')
    with pytest.raises(DataFormatError) as info:
        list(iter_jsonl(path))
    assert info.value.reason == "corrupt_file"


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
@pytest.mark.parametrize("name", ["e.jsonl", "e.json", "e.csv", "e.jsonl.gz"])
def test_empty_file_is_an_error(tmp_path, raw_lines, name, content):
    path = tmp_path / name
    raw_lines(path, [content] if content else [])
    with pytest.raises(DataFormatError) as info:
        list(iter_rows(path))
    assert info.value.reason == "empty_file" and info.value.path == str(path)


def test_invalid_utf8_is_an_encoding_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataFormatError) as info:
        list(iter_jsonl(path))
    assert info.value.reason == "encoding"


def test_json_array_elements_get_their_start_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": 2,\n   "b": 3}\n]\n')
    rows = list(iter_json(path))
    assert [(r.line, r.data) for r in rows] == [(2, {"a": 1}), (4, {"a": 2, "b": 3})]


def test_json_array_malformed_element_reports_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n  {"a": oops}\n]\n')
    with pytest.raises(DataFormatError) as info:
        list(iter_json(path))
    assert (info.value.line, info.value.reason) == (3, "malformed_json")


def test_json_array_missing_comma(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"a": 1}\n {"a": 2}]')
    with pytest.raises(DataFormatError, match="expected ','"):
        list(iter_json(path))


def test_json_file_holding_json_lines(tmp_path, raw_lines):
    path = raw_lines(tmp_path / "train.json", ['{"a": 1}', '{"a": 2}'])
    assert [(r.line, r.data) for r in iter_json(path)] == [(1, {"a": 1}), (2, {"a": 2})]


def test_json_file_holding_one_pretty_object(tmp_path):
    path = tmp_path / "one.json"
    path.write_text('{\n  "a": [1, 2]\n}\n')
    assert [r.data for r in iter_json(path)] == [{"a": [1, 2]}]


def test_parquet_rows_are_numbered(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"a": 1, "m": [{"r": "x"}]}, {"a": 2, "m": []}]), path)
    rows = list(iter_parquet(path))
    assert [(r.line, r.unit, r.data["a"]) for r in rows] == [(1, "row", 1), (2, "row", 2)]
    assert rows[0].data["m"] == [{"r": "x"}]


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFormatError) as info:
        list(iter_parquet(path))
    assert info.value.reason == "corrupt_file" and info.value.path == str(path)


def test_empty_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path)
    with pytest.raises(DataFormatError) as info:
        list(iter_parquet(path))
    assert info.value.reason == "empty_file"


def test_csv_rows_and_multiline_fields(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen\n"two\nlines",yes\nthird,ok\n')
    rows = list(iter_csv(path))
    assert [(r.line, r.data) for r in rows] == [
        (2, {"prompt": "two\nlines", "chosen": "yes"}),
        (4, {"prompt": "third", "chosen": "ok"}),
    ]


def test_csv_wrong_field_count(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a,b\n1,2\n1,2,3\n")
    rows, errors = collect(lambda h: iter_csv(path, on_error=h))
    assert len(rows) == 1 and [(e.line, e.reason) for e in errors] == [(3, "malformed_csv")]


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("hi")
    with pytest.raises(DataFormatError, match="unsupported file type"):
        iter_rows(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_read_text_falls_back_to_latin1(tmp_path):
    path = tmp_path / "r.review"
    path.write_bytes("café".encode("latin-1"))
    assert read_text(path) == "café"


def test_write_jsonl_round_trip(tmp_path):
    rows = [{"a": "é", "b": [1]}, {"a": "x"}]
    path = write_jsonl(rows, tmp_path / "sub" / "x.jsonl.gz")
    assert [r.data for r in iter_rows(path)] == rows
