"""Render the report document as Markdown with its figures as PNG files beside it."""

from __future__ import annotations

import re
from html import escape

from adapt3d.report.document import Block, Bullets, Details, Document, Figure, Heading, Note, Table, Text

FIGURE_DIR = "figures"


def render_markdown(doc: Document) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and ``{relative PNG path: bytes}`` of the figures it links to."""
    files: dict[str, bytes] = {}
    lines = [f"# {doc.title}", "", f"_{doc.subtitle}_", "", "Contents:", ""]
    lines += [f"{i}. [{s.title}](#{s.id})" for i, s in enumerate(doc.sections, 1)]
    lines.append("")
    for section in doc.sections:
        lines += [f'<a id="{section.id}"></a>', "", f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Figure):
                path = _unique(f"{FIGURE_DIR}/{block.name}", files)
                files[path] = block.png
                lines += [f"![{_inline(block.caption)}]({path})", "", f"_{_inline(block.caption)}_", ""]
            else:
                lines += _block(block) + [""]
    return "\n".join(lines).rstrip("\n") + "\n", files


def _unique(stem: str, taken: dict[str, bytes]) -> str:
    path, n = f"{stem}.png", 2
    while path in taken:
        path, n = f"{stem}_{n}.png", n + 1
    return path


def _inline(text: str) -> str:
    """Plain text safe in Markdown running text (no accidental emphasis, links or HTML).

    Underscores inside words (``Dataset002_TotalSeg``) cannot start emphasis and stay as they are.
    """
    for ch in "\\`*[]<>":
        text = text.replace(ch, "\\" + ch)
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|").replace("\n", " ")


def _block(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [f"**{_inline(block.text)}**" if block.strong else _inline(block.text)]
    if isinstance(block, Note):
        return [f"> **⚠ {_inline(block.text)}**" if block.warning else f"> {_inline(block.text)}"]
    if isinstance(block, Bullets):
        return [f"- {_inline(i)}" for i in block.items]
    if isinstance(block, Heading):
        return ["#" * block.level + " " + _inline(block.text)]
    if isinstance(block, Table):
        align = ["---:" if i in block.numeric else "---" for i in range(len(block.columns))]
        lines = ["| " + " | ".join(_cell(c) for c in block.columns) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in block.rows]
        return lines + (["", f"_{_inline(block.caption)}_"] if block.caption else [])
    if isinstance(block, Details):
        fence = "````" if "```" in block.text else "```"
        return ["<details>", f"<summary>{escape(block.summary)}</summary>", "", f"{fence}{block.language}",
                block.text.rstrip("\n"), fence, "", "</details>"]
    raise TypeError(f"unknown block {type(block).__name__}")
