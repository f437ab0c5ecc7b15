"""A terminal summary of a run: Dice before/after per domain and click count, and retention."""

from __future__ import annotations

import json
from pathlib import Path


def summary_lines(metrics: dict) -> list[str]:
    """Rows of a plain-text table (Dice × 100, mean ± sd) from a metrics.json record."""
    stages = [dom[s] for dom in metrics["domains"].values() for s in ("before", "after") if dom.get(s)]
    clicks = [str(k) for k in sorted({*metrics["clicks"], *(k for ev in stages for k in ev.get("clicks", ()))})]
    labels = {k: "no click" if k == "0" else f"{k} click" + ("s" if k != "1" else "") for k in clicks}  # 0: text or automatic
    tags = {name: " (simulated)" if dom.get("simulated") else " (reference)" if dom.get("role") == "reference" else ""
            for name, dom in metrics["domains"].items()}
    width = max([26, *(len(n + t) for n, t in tags.items())]) + 2  # names are never cut
    head = f"{'domain':<{width}}{'stage':<8}" + "".join(f"{labels[k]:>15}" for k in clicks)
    lines = [head, "-" * len(head)]
    for name, dom in metrics["domains"].items():
        tag = tags[name]
        for stage in ("before", "after"):
            ev = dom.get(stage)
            if not ev:
                continue
            cells = []
            for k in clicks:
                d = ev["summary"].get(k, {}).get("dice")
                cells.append(f"{100 * d['mean']:6.1f} ± {100 * (d['sd'] or 0):4.1f}" if d and d["mean"] is not None else "—")
            lines.append(f"{name + tag:<{width}}{stage:<8}" + "".join(f"{c:>15}" for c in cells))
    ret = metrics.get("retention")
    if ret and ret.get("final") is not None:
        lines.append(f"CT Dice retention ({ret['reference_domain']}, {ret['clicks']} click): {ret['final']:.3f}")
    return lines


def print_summary(run_dir: Path) -> None:
    """Print the summary table of ``run_dir``/metrics.json and where the run is."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    print("\n".join(summary_lines(metrics)))
    print(f"run directory: {run_dir}")
