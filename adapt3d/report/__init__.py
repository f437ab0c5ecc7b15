"""Cross-domain report from run directories: HTML (self-contained), Markdown + PNG figures, JSON.

``write_report(["runs/lora", "runs/adapter"], "report")`` compares the runs side by side:
domains × clicks before/after, CT retention over training, Dice-vs-clicks curves, per-class bars,
slice overlays of the best/median/worst cases, adapter size and provenance, with every caveat
(what the core was trained on, simulated domains, silver-standard labels) stated up front.
"""

from __future__ import annotations

from adapt3d.report.build import write_report
from adapt3d.report.runs import RUN_SCHEMA, Run, load_run, load_runs
from adapt3d.report.summary import REPORT_SCHEMA

__all__ = ["REPORT_SCHEMA", "RUN_SCHEMA", "Run", "load_run", "load_runs", "write_report"]
