"""``adapt3d report``: cross-domain report (HTML + Markdown + JSON) from one or more run directories."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "write the cross-domain report (HTML, Markdown, JSON) of one or more run directories"
DESCRIPTION = """\
Read RUN_DIR/metrics.json (schema 1), env.json and config.yaml of each run and write to DIR:
  report.html   self-contained page (figures embedded), opens in any browser
  report.md     the same content in Markdown, figures in DIR/figures/*.png
  report.json   versioned summary (report_schema 1) with the numbers of metrics.json

Content: what the core was trained on and every caveat (simulated domains, silver-standard
labels), domains x clicks Dice/NSD before and after adaptation, the runs side by side, CT
retention over training, Dice-vs-clicks curves, per-class bars, slice overlays of the best,
median and worst case per target domain, trainable parameters and adapter size, provenance.
Pass several runs (e.g. LoRA vs adapter vs full fine-tuning) to compare them. DIR must not
exist unless --overwrite; nothing is written when a run directory cannot be read.

examples:
  adapt3d report runs/lora --out report
  adapt3d report runs/lora runs/adapter runs/full --out comparison --overwrite
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by adapt3d adapt/evaluate")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--title", help="page title (default: names the runs)")


def run(args: argparse.Namespace) -> int:
    from adapt3d.report import write_report

    result = write_report(args.run_dirs, args.out, overwrite=args.overwrite, title=args.title)
    skipped = [o for o in result["overlays"] if not o["shown"]]
    paths = result["paths"]
    print(f"wrote {paths['html']} (self-contained), {paths['markdown']} (+ {len(paths['figures'])} figures), {paths['json']}")
    if skipped:
        print(f"note: {len(skipped)} overlay(s) skipped (missing files); see the report")
    return 0
