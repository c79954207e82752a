"""Prompt templates for LLM labelling (METHODS §3 "LLM labelling"), overridable from a directory.

Four plain-text files ship inside the package (``oodpl/data/labelling/templates/``):

- ``judge_system.txt``, ``judge_user.txt``: the win-rate judge; placeholders ``$question``,
  ``$answer_1``, ``$answer_2``; the reply's last line must hold only ``1`` or ``2``;
- ``pairs_system.txt``, ``pairs_user.txt``: CSG pair generation; placeholders ``$domain``,
  ``$sentiment``, ``$review``; the reply is four labelled lines (``PREFIX:``, ``REVIEW 1:``,
  ``REVIEW 2:``, ``MORE POSITIVE:``).

Placeholders use :class:`string.Template` syntax (``$name``; ``$$`` is a literal dollar), so
braces in reviews are harmless. A ``template_dir`` overrides any subset of the files by name;
the others keep the packaged wording. A template that lacks a required placeholder, or uses an
unknown one, is rejected with the file named. The loopback judge server finds the texts by the
``<question>``/``<answer_1>``/``<answer_2>``/``<review>``/``<sentiment>``/``<domain>`` tags, so
overriding templates that keep those tags still work with it.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

#: File stem → placeholders it must contain (and the only ones it may contain).
TEMPLATE_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "judge_system": frozenset(),
        "judge_user": frozenset({"question", "answer_1", "answer_2"}),
        "pairs_system": frozenset(),
        "pairs_user": frozenset({"domain", "sentiment", "review"}),
    }
)

_PLACEHOLDER = re.compile(r"\$(?:(\$)|([_a-z][_a-z0-9]*)|\{([_a-z][_a-z0-9]*)\}|())", re.IGNORECASE)


def placeholders(text: str) -> set[str]:
    """Names of the ``$name``/``${name}`` placeholders of ``text`` ("" for a stray ``$``)."""
    found = set()
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1):
            continue
        found.add(match.group(2) or match.group(3) or "")
    return found


def packaged_template_dir() -> str:
    """The directory of the packaged default templates (as a string)."""
    return str(resources.files("oodpl.data.labelling") / "templates")


@dataclass(frozen=True)
class PromptTemplates:
    """The four template texts and where each came from (a file path)."""

    texts: Mapping[str, str]
    origins: Mapping[str, str]

    @classmethod
    def load(cls, template_dir: str | os.PathLike[str] | None = None) -> PromptTemplates:
        """Packaged templates, each overridden by ``template_dir/<name>.txt`` when that exists."""
        texts: dict[str, str] = {}
        origins: dict[str, str] = {}
        if template_dir is not None and not Path(template_dir).is_dir():
            raise ValueError(f"template_dir {os.fspath(template_dir)!r} is not a directory")
        packaged = resources.files("oodpl.data.labelling") / "templates"
        for name, required in TEMPLATE_FIELDS.items():
            override = None if template_dir is None else Path(template_dir) / f"{name}.txt"
            if override is not None and override.is_file():
                text, origin = override.read_text(encoding="utf-8"), str(override)
            else:
                text = (packaged / f"{name}.txt").read_text(encoding="utf-8")
                origin = f"packaged:{name}.txt"
            found = placeholders(text)
            missing, unknown = required - found, found - required
            if missing or unknown:
                problems = []
                if missing:
                    problems.append(f"lacks {sorted('$' + m for m in missing)}")
                if unknown:
                    problems.append(f"has unknown placeholders {sorted('$' + u for u in unknown)}")
                raise ValueError(
                    f"template {origin} {' and '.join(problems)} (use $$ for a literal dollar)"
                )
            if not text.strip():
                raise ValueError(f"template {origin} is empty")
            texts[name], origins[name] = text, origin
        return cls(MappingProxyType(texts), MappingProxyType(origins))

    def render(self, name: str, **values: str) -> str:
        if name not in self.texts:
            raise ValueError(f"no template named {name!r} (have {sorted(self.texts)})")
        return string.Template(self.texts[name]).substitute(values).strip()

    def judge_messages(
        self, question: str, answer_1: str, answer_2: str
    ) -> tuple[dict[str, str], ...]:
        return (
            {"role": "system", "content": self.render("judge_system")},
            {
                "role": "user",
                "content": self.render(
                    "judge_user", question=question, answer_1=answer_1, answer_2=answer_2
                ),
            },
        )

    def pair_messages(self, domain: str, sentiment: str, review: str) -> tuple[dict[str, str], ...]:
        return (
            {"role": "system", "content": self.render("pairs_system")},
            {
                "role": "user",
                "content": self.render(
                    "pairs_user", domain=domain, sentiment=sentiment, review=review
                ),
            },
        )
