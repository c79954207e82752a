"""Errors raised by ``oodpl.models`` for bad input.

Every error is a ``ValueError`` (or ``TypeError``) subclass, so callers that only know the
contract ("bad input -> ValueError naming the argument") can catch it, and every message names the
argument, file, record index or field at fault. They exist so that bad input fails early with a
readable message instead of deep inside ``transformers``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OodplModelError(ValueError):
    """Base class of the bad-input errors of ``oodpl.models``."""


class UnknownArchitectureError(OodplModelError):
    """A preset name or ``model_type`` that neither oodpl nor ``transformers`` knows."""


class ModelNotCachedError(FileNotFoundError, OodplModelError):
    """A hub id that is not a local directory and not in the local Hugging Face cache."""


class CheckpointError(OodplModelError):
    """A checkpoint directory that is missing files or holds an inconsistent configuration."""


class TokenizerError(OodplModelError):
    """A tokenizer that cannot be used as configured (e.g. no pad and no eos token)."""


class RecordError(OodplModelError):
    """A record that cannot be tokenised (e.g. an empty response); names index and field."""


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` candidates closest to ``name`` (case-insensitive), best first."""
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def suggestion_suffix(name: str, candidates: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` when a close match exists, else the empty string."""
    hits = close_matches(name, candidates)
    if not hits:
        return ""
    return " Did you mean " + " or ".join(repr(h) for h in hits) + "?"
