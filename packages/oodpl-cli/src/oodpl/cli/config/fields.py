"""Field metadata for config schemas: one-line help and numeric bounds in one place.

Every schema field is declared as ``field(default=..., metadata=doc(help, ge=..., le=...))``. The
loader reads the metadata to validate values and name the field in errors; ``oodpl config
schema`` prints the help lines.
"""

from __future__ import annotations

import dataclasses
from typing import Any

HELP = "help"
MIN = "min"
MAX = "max"
MIN_EXCLUSIVE = "min_exclusive"


def doc(
    help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> dict[str, Any]:
    """Field metadata: one-line ``help`` and numeric bounds (value >= ge, > gt, <= le).

    Use as ``rank: int = field(default=8, metadata=doc("LoRA rank r", ge=1))``; the bounds are
    checked by :func:`check_bounds`, the help is printed by ``oodpl config schema``.
    """
    metadata: dict[str, Any] = {HELP: help}
    if ge is not None:
        metadata[MIN] = ge
    if gt is not None:
        metadata[MIN] = gt
        metadata[MIN_EXCLUSIVE] = True
    if le is not None:
        metadata[MAX] = le
    return metadata


def check_bounds(field: dataclasses.Field, value: Any) -> str | None:
    """Return a problem description if a number violates the field's bounds, else ``None``.

    Lists of numbers are checked element by element.
    """
    if isinstance(value, (list, tuple)):
        for item in value:
            problem = check_bounds(field, item)
            if problem:
                return problem
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low = field.metadata.get(MIN)
    high = field.metadata.get(MAX)
    if low is not None:
        if field.metadata.get(MIN_EXCLUSIVE) and not value > low:
            return f"must be > {low}, got {value!r}"
        if not field.metadata.get(MIN_EXCLUSIVE) and not value >= low:
            return f"must be >= {low}, got {value!r}"
    if high is not None and not value <= high:
        return f"must be <= {high}, got {value!r}"
    return None


def help_of(field: dataclasses.Field) -> str:
    """The field's one-line documentation."""
    return str(field.metadata.get(HELP, ""))
