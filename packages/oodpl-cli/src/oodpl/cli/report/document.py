"""A tiny document model shared by the Markdown and HTML renderers.

The builder turns a run directory into a :class:`Document` once; :mod:`.markdown` and
:mod:`.html` render the same document, so both reports always hold the same content.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass
class Paragraph:
    """Plain text (no markup; renderers escape it)."""

    text: str


@dataclasses.dataclass
class CodeBlock:
    """Preformatted text such as the resolved config."""

    text: str
    language: str = ""


@dataclasses.dataclass
class Table:
    """A table of already-formatted cells; ``emphasis`` holds (row, column) cells to bold."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    emphasis: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        for index, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table row {index} has {len(row)} cells, expected {len(self.columns)}"
                )


@dataclasses.dataclass
class Image:
    """A PNG figure; ``name`` is a file-name-safe slug unique within the document."""

    name: str
    png: bytes
    alt: str
    caption: str = ""

    def __post_init__(self) -> None:
        if not self.png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"image {self.name!r} is not PNG data")


@dataclasses.dataclass
class Glossary:
    """(metric, one-line meaning) pairs shown under a section."""

    entries: list[tuple[str, str]]


Block = Paragraph | CodeBlock | Table | Image | Glossary


@dataclasses.dataclass
class DocSection:
    """A titled part of the report."""

    title: str
    blocks: list[Block] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Document:
    """The whole report."""

    title: str
    sections: list[DocSection] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def images(self) -> list[Image]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Image)]


def slugify(text: str) -> str:
    """Lower-case ASCII slug: letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "figure"


def anchor(text: str) -> str:
    """An HTML id for a section title."""
    return "sec-" + slugify(text)
