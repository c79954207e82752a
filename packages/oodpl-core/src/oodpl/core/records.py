"""Preference and completion records shared by every oodpl package.

They live in core (torch-free, standard library only) because both ``oodpl.data`` (which loads them)
and ``oodpl.models`` (which tokenises them) need them, and those two packages never import each
other. Records are small frozen dataclasses, validated once at construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _require_text(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{owner}.{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{owner}.{name} must be a non-empty string")


def _copy_meta(owner: str, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"{owner}.meta must be a mapping, got {type(meta).__name__}")
    return dict(meta)


@dataclass(frozen=True)
class Preference:
    """One preference triple ``(x, y_w, y_l)``: ``chosen`` is preferred to ``rejected``.

    ``domain`` names the distribution the pair comes from (the unit of OOD splits); ``source``
    the dataset or generator; ``meta`` anything else (scores, true preference probability, ids).
    """

    prompt: str
    chosen: str
    rejected: str
    domain: str
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected", "domain"):
            _require_text("Preference", name, getattr(self, name))
        if not isinstance(self.source, str):
            raise TypeError(f"Preference.source must be a str, got {type(self.source).__name__}")
        if self.chosen == self.rejected:
            raise ValueError("Preference.chosen and Preference.rejected are identical")
        object.__setattr__(self, "meta", _copy_meta("Preference", self.meta))

    def to_trl(self) -> dict[str, str]:
        """The ``prompt``/``chosen``/``rejected`` columns TRL's trainers use."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "domain": self.domain,
            "source": self.source,
            "meta": dict(self.meta),
        }


@dataclass(frozen=True)
class Completion:
    """One fine-tuning example ``(x, y)`` from a domain's own distribution ``p_d(y|x)``."""

    prompt: str
    response: str
    domain: str
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("prompt", "response", "domain"):
            _require_text("Completion", name, getattr(self, name))
        if not isinstance(self.source, str):
            raise TypeError(f"Completion.source must be a str, got {type(self.source).__name__}")
        object.__setattr__(self, "meta", _copy_meta("Completion", self.meta))

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "domain": self.domain,
            "source": self.source,
            "meta": dict(self.meta),
        }
