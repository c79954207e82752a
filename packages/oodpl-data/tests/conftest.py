"""Shared helpers for the oodpl-data loader, registry and split tests."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The committed upstream-format fixture tree (read-only: copy before changing)."""
    return FIXTURES


@pytest.fixture
def fixture_copy(tmp_path: Path):
    """``fixture_copy("shp")`` -> a writable copy of ``fixtures/shp`` under ``tmp_path``."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target)
        return target

    return copy


def read_jsonl(path: Path) -> list:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl_lines(path: Path, lines: list[str]) -> Path:
    """Write raw text lines (not necessarily valid JSON), gzipped if the name ends .gz."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def jsonl_rows():
    """``jsonl_rows(path)`` -> the decoded rows of a (gzipped) JSON-lines file."""
    return read_jsonl


@pytest.fixture
def raw_lines():
    """``raw_lines(path, [text, ...])`` writes raw lines (gzipped for ``.gz``) and returns path."""
    return write_jsonl_lines
