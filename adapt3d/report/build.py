"""``write_report``: load run directories, build the document, write HTML + Markdown + JSON atomically."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path

from adapt3d.atomic import atomic_dir
from adapt3d.report.html import render_html
from adapt3d.report.markdown import render_markdown
from adapt3d.report.runs import load_runs
from adapt3d.report.sections import build_document
from adapt3d.report.summary import build_summary

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
JSON_NAME = "report.json"


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    title: str | None = None,
) -> dict:
    """Write ``out/report.html`` (self-contained), ``out/report.md`` + ``out/figures/*.png`` and ``out/report.json``.

    Every run directory is loaded and validated before anything is written; ``out`` appears only
    once complete (an existing ``out`` is refused unless ``overwrite``). Returns the JSON summary
    with the written paths under ``"paths"`` (not part of report.json).
    """
    runs = load_runs(run_dirs)
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        doc, overlays = build_document(runs, generated, title)
        summary = build_summary(runs, overlays, generated)
        markdown, figure_files = render_markdown(doc)
        for rel, png in figure_files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(png)
        (tmp / MARKDOWN_NAME).write_text(markdown, encoding="utf-8")
        (tmp / HTML_NAME).write_text(render_html(doc), encoding="utf-8")
        (tmp / JSON_NAME).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths = {"html": out / HTML_NAME, "markdown": out / MARKDOWN_NAME, "json": out / JSON_NAME,
             "figures": sorted(out / rel for rel in figure_files)}
    return {**summary, "paths": paths}
