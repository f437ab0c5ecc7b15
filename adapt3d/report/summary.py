"""The report's JSON summary (``report.json``): a stable, versioned schema.

Schema 1 (every key always present; absent values are null)::

    {"report_schema": 1, "generated": ISO time, "adapt3d_version": str,
     "runs": [RUN], "comparison": [ROW], "overlays": [OVERLAY]}
    RUN      = {"label", "name", "dir", "kind", "run_schema", "core": {"name", "checkpoint", "fingerprint",
                "description"}, "adapter", "clicks", "nsd_tolerance_mm", "domains": {name: DOMAIN},
                "retention": RETENTION | null, "training", "caveats", "provenance": PROVENANCE, "notes"}
    DOMAIN   = {"label", "dataset", "modality", "role", "simulated", "silver_standard", "classes",
                "before": STAGE | null, "after": STAGE | null}
    STAGE    = {"clicks", "summary", "per_class", "n_cases"}      (summary/per_class copied from metrics.json)
    RETENTION= {"reference_domain", "clicks", "frozen", "final", "best", "best_step",
                "best_checkpoint_step", "guard", "history"}
    PROVENANCE = {"adapt3d_version", "python", "packages", "git_hash", "git_dirty", "seed",
                "config_hash", "data_hashes", "started", "finished", "command"}
    ROW      = {"domain", "clicks", "before": {run label: STAT | null}, "after": {run label: STAT | null}}
    OVERLAY  = {"run", "domain", "rank", "case", "class", "stage", "clicks", "dice", "shown", "note", "figure"}

Numbers are copied unchanged from metrics.json (fractions in [0, 1], not ×100).
"""

from __future__ import annotations

from adapt3d import __version__
from adapt3d.report.runs import RUN_SCHEMA, STAGES, Run, best_retention, domain_label, stat
from adapt3d.report.tables import merged_domains

REPORT_SCHEMA = 1
PROVENANCE_KEYS = ("adapt3d_version", "python", "packages", "git_hash", "git_dirty", "seed", "config_hash",
                   "data_hashes", "started", "finished", "command")


def build_summary(runs: list[Run], overlays: list[dict], generated: str) -> dict:
    """The JSON-ready summary of a report."""
    return {
        "report_schema": REPORT_SCHEMA,
        "generated": generated,
        "adapt3d_version": __version__,
        "runs": [_run(r) for r in runs],
        "comparison": _comparison(runs),
        "overlays": overlays,
    }


def _run(run: Run) -> dict:
    m = run.metrics
    core = m["core"]
    env = run.env or {}
    return {
        "label": run.label,
        "name": run.name,
        "dir": str(run.path),
        "kind": m["kind"],
        "run_schema": RUN_SCHEMA,
        "core": {key: core.get(key) for key in ("name", "checkpoint", "fingerprint", "description")},
        "adapter": m.get("adapter"),
        "clicks": run.clicks,
        "nsd_tolerance_mm": m.get("nsd_tolerance_mm"),
        "domains": {name: _domain(name, dom) for name, dom in run.domains.items()},
        "retention": _retention(m.get("retention")),
        "training": m.get("training"),
        "caveats": list(m.get("caveats") or []),
        "provenance": {key: env.get(key) for key in PROVENANCE_KEYS},
        "notes": list(run.notes),
    }


def _domain(name: str, dom: dict) -> dict:
    out = {"label": domain_label(name, dom)}
    out.update({key: dom.get(key) for key in ("dataset", "modality", "role")})
    out.update({key: bool(dom.get(key)) for key in ("simulated", "silver_standard")})
    out["classes"] = list(dom["classes"])
    for stage in STAGES:
        ev = dom[stage]
        out[stage] = None if ev is None else {
            "clicks": ev["clicks"],
            "summary": ev["summary"],
            "per_class": ev.get("per_class", {}),
            "n_cases": len({c["case"] for c in ev.get("per_case", [])}),
        }
    return out


def _retention(ret: dict | None) -> dict | None:
    if ret is None:
        return None
    best = best_retention(ret)
    return {
        "reference_domain": ret.get("reference_domain"),
        "clicks": ret.get("clicks"),
        "frozen": ret.get("frozen"),
        "final": ret.get("final"),
        "best": None if best is None else best["retention"],
        "best_step": None if best is None else best["step"],
        "best_checkpoint_step": ret.get("best_checkpoint_step"),
        "guard": ret.get("guard"),
        "history": ret.get("history", []),
    }


def _comparison(runs: list[Run]) -> list[dict]:
    rows = []
    clicks = sorted({k for r in runs for k in r.clicks})
    for name in merged_domains(runs):
        for k in clicks:
            row = {"domain": name, "clicks": k}
            for stage in STAGES:
                row[stage] = {r.label: stat(r.domains[name][stage], k, "dice") if name in r.domains else None for r in runs}
            rows.append(row)
    return rows
