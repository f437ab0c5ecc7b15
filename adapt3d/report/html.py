"""Render the report document as one self-contained HTML page (CSS inline, figures as base64 PNG)."""

from __future__ import annotations

import base64
from html import escape

from adapt3d.report.document import Block, Bullets, Details, Document, Figure, Heading, Note, Table, Text

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1b1f24;
       background: #fafbfc; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 2em; }
h3 { margin: 1.4em 0 0.4em; }
.subtitle { color: #57606a; margin-top: 0; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 16px; margin: 12px 0; }
nav ol { margin: 4px 0; padding-left: 20px; columns: 2; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 0.88em; }
caption { caption-side: bottom; text-align: left; color: #57606a; font-size: 0.9em; padding-top: 4px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f9fafb; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9em; }
.note { border-left: 4px solid #54aeff; background: #ddf4ff; padding: 6px 12px; margin: 8px 0; }
.warning { border-left-color: #d4a72c; background: #fff8c5; font-weight: 600; }
details { margin: 8px 0 16px; }
summary { cursor: pointer; color: #0969da; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 8px; overflow-x: auto; font-size: 0.85em; }
"""


def render_html(doc: Document) -> str:
    """The whole page as a string; needs no other file."""
    toc = "".join(f'<li><a href="#{s.id}">{escape(s.title)}</a></li>' for s in doc.sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="subtitle">{escape(doc.subtitle)}</p>',
        f"<nav><strong>Contents</strong><ol>{toc}</ol></nav>",
    ]
    for section in doc.sections:
        parts.append(f'<section id="{escape(section.id)}"><h2>{escape(section.title)}</h2>')
        parts += [_block(b) for b in section.blocks]
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _block(block: Block) -> str:
    if isinstance(block, Text):
        inner = escape(block.text)
        return f"<p><strong>{inner}</strong></p>" if block.strong else f"<p>{inner}</p>"
    if isinstance(block, Note):
        cls = "note warning" if block.warning else "note"
        return f'<div class="{cls}">{"⚠ " if block.warning else ""}{escape(block.text)}</div>'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(block.caption)}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>")
    if isinstance(block, Details):
        return f"<details><summary>{escape(block.summary)}</summary><pre><code>{escape(block.text)}</code></pre></details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{escape(v)}</td>' if i in table.numeric else f"<td>{escape(v)}</td>" for i, v in enumerate(row))
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
