"""The report as format-neutral blocks; the HTML and Markdown writers render the same document."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Text:
    """A paragraph of plain text (``strong`` renders it bold)."""

    text: str
    strong: bool = False


@dataclass
class Note:
    """A visible remark; ``warning`` ones are for missing provenance, skipped overlays, loud caveats."""

    text: str
    warning: bool = False


@dataclass
class Bullets:
    """A bulleted list of plain-text items."""

    items: list[str]


@dataclass
class Heading:
    """A sub-heading inside a section (level 3 or 4)."""

    text: str
    level: int = 3


@dataclass
class Table:
    """A table of pre-formatted cells; ``numeric`` columns are right-aligned."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)


@dataclass
class Figure:
    """A PNG figure; ``name`` is its file name (without ``.png``) in the Markdown output."""

    name: str
    png: bytes
    caption: str


@dataclass
class Details:
    """Collapsed verbatim text (e.g. config.yaml)."""

    summary: str
    text: str
    language: str = ""


Block = Text | Note | Bullets | Heading | Table | Figure | Details


@dataclass
class Section:
    """A top-level section with an anchor id."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    """The whole report: a title, a subtitle line and the sections in order."""

    title: str
    subtitle: str
    sections: list[Section]

    def figures(self) -> list[Figure]:
        """Every figure of the document in order of appearance."""
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
