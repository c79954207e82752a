"""Reading and writing ``results/<name>.json`` files (validated against the results schema)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oodpl.cli.report._checks import ResultError
from oodpl.cli.report.results import SCHEMA, Section, parse_result


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def read_result(path: str | Path) -> Section:
    """Read and validate ``results/<name>.json``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise ResultError(f"{path}: result file does not exist") from None
    except ValueError as exc:  # JSONDecodeError and non-finite constants
        raise ResultError(f"{path}: invalid JSON: {exc}") from None
    return parse_result(obj, str(path))


def write_result(path: str | Path, result: Section | Mapping[str, Any]) -> Path:
    """Validate ``result`` and write it atomically as JSON (temp file + rename)."""
    path = Path(path)
    payload = result.to_json() if isinstance(result, Section) else dict(result)
    payload.setdefault("schema", SCHEMA)
    parse_result(payload, str(path))  # validate before anything touches the disk
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
