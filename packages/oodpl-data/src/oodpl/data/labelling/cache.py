"""Persistent response cache: a re-run or resumed run never pays for the same call twice.

The key is ``sha256`` of the canonical JSON of ``{"model", "messages", "params"}`` (sorted keys,
no whitespace), so any change to the model, the prompt text or a sampling parameter is a new key
and an identical request is a hit. Entries live in an append-only JSONL file (one
``{"key", "reply"}`` object per line, fsync'd; see :mod:`oodpl.data.labelling.jsonl`), loaded into
memory on open. Only replies the endpoint actually returned are cached; failed calls (errors,
exhausted retries) are not, so a re-run tries them again. Nothing secret is stored: no headers,
no API key, and no prompt text (the key is a hash).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .jsonl import AppendOnlyJsonl, JsonlReadStats, read_jsonl

CACHE_FORMAT_VERSION = 1


def cache_key(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    """``sha256`` hex digest of the canonical JSON of (model, messages, params)."""
    payload = {
        "model": model,
        "messages": [dict(message) for message in messages],
        "params": dict(params),
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedReply:
    """What is kept of one chat completion: its text, finish reason and token usage."""

    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    usage_estimated: bool = False


class ResponseCache:
    """Replies in memory, backed by an append-only JSONL file (``path=None``: memory only)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> None:
        self._replies: dict[str, CachedReply] = {}
        self.read_stats = JsonlReadStats()
        self._writer: AppendOnlyJsonl | None = None
        self.path = None if path is None else os.fspath(path)
        if path is None:
            return
        self._writer = AppendOnlyJsonl(path, fsync=fsync)  # locks, then cuts a torn tail
        for line in read_jsonl(path, strict=False, stats=self.read_stats):
            entry = line.record
            try:
                key = entry["key"]
                reply = CachedReply(**entry["reply"])
                if entry.get("v") != CACHE_FORMAT_VERSION or not isinstance(key, str):
                    raise ValueError("unknown cache format")
            except (KeyError, TypeError, ValueError):
                self.read_stats.corrupt_lines += 1
                continue
            self._replies[key] = reply

    def get(self, key: str) -> CachedReply | None:
        return self._replies.get(key)

    def put(self, key: str, reply: CachedReply) -> None:
        if key in self._replies:
            return
        self._replies[key] = reply
        if self._writer is not None:
            self._writer.append({"v": CACHE_FORMAT_VERSION, "key": key, "reply": asdict(reply)})

    def __contains__(self, key: object) -> bool:
        return key in self._replies

    def __len__(self) -> int:
        return len(self._replies)

    def keys(self) -> Iterator[str]:
        return iter(list(self._replies))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
