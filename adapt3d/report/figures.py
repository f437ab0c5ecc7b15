"""Report figures (matplotlib, Agg, no pyplot state): retention, Dice-vs-clicks, per-class bars."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from adapt3d.report.runs import Run, class_stat, domain_label, stat
from adapt3d.report.tables import merged_domains

DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure drawn by the Agg canvas (no global pyplot state, no display)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp/software metadata, so output is reproducible)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def run_colours(runs: list[Run]) -> dict[str, tuple]:
    """One colour per run label (tab10, cycling)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {run.label: cmap(i % 10) for i, run in enumerate(runs)}


def _domain_figure(runs: list[Run], per_row: int, width: float, draw: Callable[[Axes, str, dict], None]) -> bytes:
    """One Dice panel (0-100, titled with the marked domain name) per domain of any run, filled by
    ``draw(ax, domain, colours)``; legends and grid added here."""
    domains = merged_domains(runs)
    colours = run_colours(runs)
    cols = min(len(domains), per_row)
    rows = math.ceil(len(domains) / cols)
    fig = new_figure(width * cols, 3.4 * rows + 0.4)
    for i, (name, info) in enumerate(domains.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set(title=domain_label(name, info), ylabel="Dice (×100)", ylim=(0, 100))
        draw(ax, name, colours)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return to_png(fig)


def retention_figure(runs: list[Run]) -> bytes | None:
    """Retention vs training step per run, guard thresholds dashed; None when no run has a history."""
    with_history = [r for r in runs if (r.metrics.get("retention") or {}).get("history")]
    if not with_history:
        return None
    colours = run_colours(runs)
    fig = new_figure(8, 4)
    ax = fig.add_subplot()
    thresholds: dict[float, list[str]] = {}
    for run in with_history:
        ret = run.metrics["retention"]
        points = [(h["step"], 100 * h["retention"]) for h in ret["history"] if h.get("retention") is not None]
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker="o", ms=3, color=colours[run.label], label=f"{run.label}")
        threshold = (ret.get("guard") or {}).get("threshold")
        if threshold is not None:
            thresholds.setdefault(100 * threshold, []).append(run.label)
    for value, labels in thresholds.items():
        colour = "black" if len(thresholds) == 1 else colours[labels[0]]
        ax.axhline(value, ls="--", lw=1.2, color=colour, label=f"guard {value:.1f}% ({', '.join(labels)})")
    ax.axhline(100, ls=":", lw=0.8, color="grey")
    ref = {str(r.metrics["retention"].get("reference_domain")) for r in with_history}
    ax.set(xlabel="training step", ylabel="CT Dice retention (%)", title=f"Retention on {', '.join(sorted(ref))} (reference)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def curves_figure(runs: list[Run]) -> bytes:
    """Dice vs clicks, one panel per domain: before dashed, after solid, one colour per run."""

    def draw(ax: Axes, name: str, colours: dict) -> None:
        for run in runs:
            dom = run.domains.get(name)
            if dom is None:
                continue
            for stage, style in (("before", "--"), ("after", "-")):
                points = [(k, stat(dom[stage], k, "dice")) for k in run.clicks]
                points = [(k, 100 * s["mean"]) for k, s in points if s is not None and s.get("mean") is not None]
                if points:
                    ks, means = zip(*points)
                    ax.plot(ks, means, ls=style, marker="o", ms=3, color=colours[run.label], label=f"{run.label} {stage}")
        ax.set(xlabel="clicks")
        ax.set_xticks(sorted({k for r in runs for k in r.clicks}))

    return _domain_figure(runs, 3, 4.2, draw)


def per_class_figure(runs: list[Run]) -> bytes:
    """Per-class Dice bars at each run's largest click count: frozen core (hatched) vs each run after."""

    def draw(ax: Axes, name: str, colours: dict) -> None:
        classes = list(dict.fromkeys(c for r in runs if name in r.domains for c in r.domains[name]["classes"]))
        bars = _bars(runs, name, classes)
        width = 0.8 / max(len(bars), 1)
        x = np.arange(len(classes))
        for j, (label, values, before, run_label) in enumerate(bars):
            colour = "lightgrey" if before else colours[run_label]
            ax.bar(x + (j - (len(bars) - 1) / 2) * width, values, width, color=colour, edgecolor="black",
                   linewidth=0.5, hatch="//" if before else None, label=label)
        ax.set_xticks(x, classes, rotation=20 if len(classes) > 4 else 0)

    return _domain_figure(runs, 2, 5.5, draw)


def _bars(runs: list[Run], domain: str, classes: list[str]) -> list[tuple[str, list[float], bool, str]]:
    """(legend, per-class mean Dice ×100, is-before, run label) series; identical baselines shown once."""
    series: list[tuple[str, list[float], bool, str]] = []
    seen_before: list[list[float]] = []
    for run in runs:
        dom = run.domains.get(domain)
        if dom is None:
            continue
        k = run.kmax
        for stage in ("before", "after"):
            ev = dom[stage]
            if ev is None:
                continue
            values = [_class_mean(ev, c, k) for c in classes]
            if stage == "before":
                if any(np.allclose(values, v, equal_nan=True) for v in seen_before):
                    continue
                seen_before.append(values)
                label = "frozen core before" if len(runs) == 1 else f"{run.label} before"
            else:
                label = run.label
            series.append((f"{label} @{k} clicks", values, stage == "before", run.label))
    return series


def _class_mean(ev: dict, cls: str, k: int) -> float:
    s = class_stat(ev, cls, k, "dice")
    return float("nan") if s is None or s.get("mean") is None else 100 * s["mean"]
