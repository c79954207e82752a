"""Validation helpers for result files: each raises :class:`ResultError` naming file and field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class ResultError(ValueError):
    """A result file or payload that does not match the results schema (names file and field)."""


def fail(where: str, message: str) -> ResultError:
    return ResultError(f"{where}: {message}")


def text(obj: Mapping, key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise fail(where, f"'{key}' must be a non-empty string, got {value!r}")
    return value


def number(value: Any, where: str, *, allow_null: bool = False) -> float | None:
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(where, f"expected a number{' or null' if allow_null else ''}, got {value!r}")
    if not math.isfinite(value):
        raise fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def numbers(values: Any, where: str, *, allow_null: bool = False) -> list[float | None]:
    if not isinstance(values, list):
        raise fail(where, f"expected a list of numbers, got {type(values).__name__}")
    return [number(v, f"{where}[{i}]", allow_null=allow_null) for i, v in enumerate(values)]


def names(values: Any, where: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise fail(where, "expected a non-empty list of names")
    if not all(isinstance(v, str) and v for v in values):
        raise fail(where, f"expected non-empty strings, got {values!r}")
    if len(set(values)) != len(values):
        raise fail(where, f"names must be unique, got {values!r}")
    return list(values)


def mapping(obj: Any, where: str, *, non_empty: bool = True) -> Mapping:
    if not isinstance(obj, Mapping) or (non_empty and not obj):
        raise fail(where, "expected a non-empty JSON object")
    return obj


def matrix(values: Any, rows: int, cols: int, where: str) -> list[list[float | None]]:
    if not isinstance(values, list) or len(values) != rows:
        raise fail(where, f"expected {rows} rows (one per train domain)")
    out = []
    for i, row in enumerate(values):
        parsed = numbers(row, f"{where}[{i}]", allow_null=True)
        if len(parsed) != cols:
            raise fail(f"{where}[{i}]", f"has {len(parsed)} entries, expected {cols}")
        out.append(parsed)
    return out
