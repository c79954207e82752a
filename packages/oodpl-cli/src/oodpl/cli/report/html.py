"""Render a :class:`~oodpl.cli.report.document.Document` as one self-contained HTML file.

Images are embedded as base64 PNG ``data:`` URIs and the style sheet is inline: the file has no
external reference (no scripts, fonts, or links to other files) and opens in any browser
straight from disk, with no server.
"""

from __future__ import annotations

import base64
import re
from html import escape

from oodpl.cli.report.document import (
    CodeBlock,
    Document,
    Glossary,
    Image,
    Paragraph,
    Table,
    anchor,
)

_NUMERIC = re.compile(r"^[\s\d.,+\-–±e\[\]]+$")
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1f2328; background: #ffffff; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f6f8fa; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-style: italic; color: #57606a; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
dl.glossary { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem;
              font-size: .9rem; }
dl.glossary dt { font-family: monospace; font-weight: bold; }
dl.glossary dd { margin: 0; color: #333; }
.warnings { background: #fff8c5; border: 1px solid #d4a72c; padding: .6rem 1rem; }
nav a { margin-right: 1rem; }
"""


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(table: Table) -> str:
    parts = ["<table>"]
    if table.caption:
        parts.append(f"<caption>{escape(table.caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in table.columns))
    parts.append("</tr></thead><tbody>")
    for r, row in enumerate(table.rows):
        cells = []
        for c, text in enumerate(row):
            content = escape(text)
            if (r, c) in table.emphasis:
                content = f"<strong>{content}</strong>"
            numeric = c > 0 and _NUMERIC.match(text) is not None
            cells.append(f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def render_html(document: Document) -> str:
    """The report as a single HTML5 page with every image inlined."""
    body: list[str] = [f"<h1>{escape(document.title)}</h1>"]
    if document.warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in document.warnings)
        body.append(f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>')
    if len(document.sections) > 1:
        links = "".join(
            f'<a href="#{anchor(s.title)}">{escape(s.title)}</a>' for s in document.sections
        )
        body.append(f"<nav>{links}</nav>")
    for section in document.sections:
        body.append(f'<section id="{anchor(section.title)}"><h2>{escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Paragraph):
                body.append(f"<p>{escape(block.text)}</p>")
            elif isinstance(block, CodeBlock):
                body.append(f"<pre><code>{escape(block.text)}</code></pre>")
            elif isinstance(block, Table):
                body.append(_table(block))
            elif isinstance(block, Image):
                caption = (
                    f"<figcaption>{escape(block.caption)}</figcaption>" if block.caption else ""
                )
                body.append(
                    f'<figure><img src="{png_data_uri(block.png)}" alt="{escape(block.alt)}">'
                    f"{caption}</figure>"
                )
            elif isinstance(block, Glossary):
                items = "".join(
                    f"<dt>{escape(name)}</dt><dd>{escape(meaning)}</dd>"
                    for name, meaning in block.entries
                )
                body.append(f'<p><strong>Metrics</strong></p><dl class="glossary">{items}</dl>')
            else:  # pragma: no cover - the Block union is closed
                raise TypeError(f"unknown block {type(block).__name__}")
        body.append("</section>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(document.title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
