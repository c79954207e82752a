"""Render a :class:`~oodpl.cli.report.document.Document` as Markdown.

Images are written as separate PNG files next to ``report.md`` (``report_files/<name>.png``) and
referenced relatively, which every Markdown viewer shows; the HTML report embeds them instead.
"""

from __future__ import annotations

from oodpl.cli.report.document import (
    CodeBlock,
    Document,
    Glossary,
    Image,
    Paragraph,
    Table,
)

IMAGE_DIR = "report_files"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _text(text: str) -> str:
    return text.replace("<", "&lt;")


def _table(table: Table) -> list[str]:
    lines = []
    if table.caption:
        lines += [f"*{_cell(table.caption)}*", ""]
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join(" --- " for _ in table.columns) + "|")
    for r, row in enumerate(table.rows):
        cells = [
            f"**{_cell(text)}**" if (r, c) in table.emphasis else _cell(text)
            for c, text in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(document: Document, image_dir: str = IMAGE_DIR) -> tuple[str, dict[str, bytes]]:
    """Return (Markdown text, {relative image path: PNG bytes}) for ``document``."""
    lines = [f"# {_cell(document.title)}", ""]
    files: dict[str, bytes] = {}
    if document.warnings:
        lines += ["> **Warnings**", ">"]
        lines += [f"> - {_cell(w)}" for w in document.warnings]
        lines.append("")
    if len(document.sections) > 1:
        lines += ["**Contents:** " + " · ".join(_cell(s.title) for s in document.sections), ""]
    for section in document.sections:
        lines += [f"## {_cell(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [_text(block.text), ""]
            elif isinstance(block, CodeBlock):
                lines += [f"```{block.language}", block.text.rstrip("\n"), "```", ""]
            elif isinstance(block, Table):
                lines += [*_table(block), ""]
            elif isinstance(block, Image):
                path = f"{image_dir}/{block.name}.png"
                files[path] = block.png
                lines += [f"![{_cell(block.alt)}]({path})", ""]
                if block.caption:
                    lines += [f"*{_cell(block.caption)}*", ""]
            elif isinstance(block, Glossary):
                lines += ["**Metrics:**", ""]
                lines += [f"- `{name}`: {_text(meaning)}" for name, meaning in block.entries]
                lines.append("")
            else:  # pragma: no cover - the Block union is closed
                raise TypeError(f"unknown block {type(block).__name__}")
    return "\n".join(lines).rstrip("\n") + "\n", files
