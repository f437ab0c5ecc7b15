"""Runs with and without CT preservation side by side: target gain, retention, merged-export retention."""

from __future__ import annotations

from adapt3d.report.document import Table
from adapt3d.report.runs import Run, stat
from adapt3d.report.tables import DASH, fmt_pct


def _target(run: Run) -> str | None:
    return next((n for n, d in run.domains.items() if d.get("role") == "target"), None)


def _gain(run: Run, domain: str | None, k: int) -> str:
    if domain is None:
        return DASH
    before, after = (stat(run.domains[domain].get(s), k, "dice") for s in ("before", "after"))
    if before is None or after is None:
        return DASH
    return f"{100 * (after['mean'] - before['mean']):+.1f}"


def preservation_table(runs: list[Run]) -> Table:
    """Per run: the preservation setting, target Dice gain per click count, the adapted model's CT
    retention and the MERGED weights' CT retention per click count (what a colleague receives)."""
    clicks = sorted({k for r in runs for k in r.clicks})
    rows = []
    for run in runs:
        ret = run.metrics.get("retention") or {}
        merged = (ret.get("merged") or {}).get("per_click") or {}
        kept = (run.metrics.get("training") or {}).get("preserve")
        setting = "off" if not kept else f"on: weight {kept['weight']}, {kept['crops_per_step']} crops/step, {kept['target']}"
        history = (kept or {}).get("loss_history") or []
        loss = DASH if not history else f"{history[-1]['loss']:.4f}"
        domain = _target(run)
        rows.append([run.label, setting, loss] + [_gain(run, domain, k) for k in clicks] + [fmt_pct(ret.get("final"))]
                    + [fmt_pct(merged.get(str(k))) for k in clicks])
    columns = (["run", "CT preservation", "last preservation loss"] + [f"target Δ Dice @{k}" for k in clicks]
               + ["CT retention (adapter)"] + [f"MERGED CT retention @{k}" for k in clicks])
    caption = ("Target gain = Dice after − before (×100). Merged retention: the merged export's CT Dice / the frozen "
               "core's, same prompts and seeds (bottleneck adapters cannot merge: their core + adapter export is evaluated).")
    return Table(columns, rows, caption, numeric=set(range(2, len(columns))))
