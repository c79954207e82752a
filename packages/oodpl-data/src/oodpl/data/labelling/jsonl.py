"""Append-only JSONL files that survive a killed writer.

Every :meth:`AppendOnlyJsonl.append` writes one complete line, flushes it and ``fsync``s the
file, so a record is on disk before the caller moves on. A writer killed mid-line (SIGKILL, power
loss) can leave a torn last line without its newline; opening the file again cuts that torn
tail off before appending, and :func:`read_jsonl` skips it (and counts it) when reading. An
advisory ``flock`` (POSIX) stops two processes from appending to the same file at once; the
kernel drops it when the holder dies, so a killed run never leaves the file locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX only; elsewhere the lock is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class FileInUseError(RuntimeError):
    """Another live process holds the append lock of this file."""


def _cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; returns the number of bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        block = 65536
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                handle.truncate(keep)
                return size - keep
            end = start
        handle.truncate(0)
        return size


class _SharedFile:
    """One open, flock'ed append handle per file and process, shared by its writers."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("ab")
        if fcntl is not None:
            try:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.handle.close()
                raise FileInUseError(
                    f"{path} is being appended to by another running process"
                ) from None
        self.torn_bytes_removed = _cut_torn_tail(path)
        self.lock = threading.Lock()
        self.users = 0


_OPEN_FILES: dict[str, _SharedFile] = {}
_OPEN_FILES_LOCK = threading.Lock()


class AppendOnlyJsonl:
    """Appends JSON objects, one per line, with flush + fsync after each (see module docstring).

    Writers of the same file in one process share a single handle (appends are serialised);
    a writer in another process is refused with :class:`FileInUseError` while this one is open.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._key = os.path.realpath(self.path)
        with _OPEN_FILES_LOCK:
            shared = _OPEN_FILES.get(self._key)
            if shared is None:
                shared = _OPEN_FILES[self._key] = _SharedFile(self.path)
            shared.users += 1
        self._shared: _SharedFile | None = shared
        self.torn_bytes_removed = shared.torn_bytes_removed

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"
        data = line.encode("utf-8")
        shared = self._shared
        if shared is None:
            raise ValueError(f"{self.path} is closed")
        with shared.lock:
            shared.handle.write(data)
            shared.handle.flush()
            if self._fsync:
                os.fsync(shared.handle.fileno())

    def close(self) -> None:
        with _OPEN_FILES_LOCK:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.users -= 1
            if shared.users == 0:
                shared.handle.close()  # releases the flock
                _OPEN_FILES.pop(self._key, None)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down globals
            self.close()

    def __enter__(self) -> AppendOnlyJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class JsonlLine:
    line_number: int
    record: dict[str, Any]


@dataclass
class JsonlReadStats:
    """What :func:`read_jsonl` skipped: a torn last line, or corrupt lines (``strict=False``)."""

    torn_tail: bool = False
    corrupt_lines: int = 0


def read_jsonl(
    path: str | os.PathLike[str], *, strict: bool = True, stats: JsonlReadStats | None = None
) -> Iterator[JsonlLine]:
    """Yield the JSON objects of ``path``, skipping a torn (newline-less) last line.

    A corrupt line elsewhere raises ValueError naming the file and line when ``strict``, else it
    is skipped and counted in ``stats.corrupt_lines``.
    """
    stats = stats if stats is not None else JsonlReadStats()
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                stats.torn_tail = True
                return
            text = raw.strip()
            if not text:
                continue
            try:
                record = json.loads(text.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as err:
                if strict:
                    raise ValueError(
                        f"{path}: line {number} is not a JSON object ({err})"
                    ) from None
                stats.corrupt_lines += 1
                continue
            yield JsonlLine(number, record)
