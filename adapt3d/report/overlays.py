"""Slice overlays: ground-truth vs predicted contours through the object's centre of mass.

For each target domain of a run, the best, median and worst case × class (by Dice at the largest
click count of the adapted model, or of the frozen core for runs without "after") are drawn in
axial, coronal and sagittal slices of the volume reoriented to RAS, with voxel spacing respected.
Slices are shown in radiological convention (patient's right and anterior on the image left).
A missing or unreadable file skips that overlay with a visible note instead of failing the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.lines import Line2D
from scipy import ndimage

from adapt3d.data.imageio import load_volume
from adapt3d.errors import InputError
from adapt3d.report.document import Block, Figure, Note
from adapt3d.report.figures import new_figure, to_png
from adapt3d.report.runs import Run, domain_label

#: (view name, axis sliced in RAS order, (horizontal axis, vertical axis)).
VIEWS = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))
COLOURS = {"label": "lime", "after": "red", "before": "gold"}
#: RAS axis → (letter at its high end, letter at its low end).
SIDES = {0: ("R", "L"), 1: ("A", "P"), 2: ("S", "I")}


@dataclass
class OverlayCase:
    """One selected case × class: its rank(s) and Dice at ``k`` clicks."""

    ranks: str
    entry: dict
    dice: float


@dataclass
class CaseVolumes:
    """Image and masks (ground truth, predictions by stage) in RAS voxel order, with the spacing in mm."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float, float]


def select_cases(evaluation: dict, k: int) -> list[OverlayCase]:
    """Best, median and worst per-case entries by Dice at ``k`` clicks (coinciding ranks merged)."""
    scored = [(e["dice"][str(k)], e["case"], e["class"], e) for e in evaluation.get("per_case", []) if e["dice"].get(str(k)) is not None]
    if not scored:
        return []
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    picks: dict[int, list[str]] = {}
    for rank, index in (("best", 0), ("median", len(scored) // 2), ("worst", len(scored) - 1)):
        picks.setdefault(index, []).append(rank)
    return [OverlayCase(" = ".join(ranks), scored[i][3], float(scored[i][0])) for i, ranks in picks.items()]


def domain_overlays(run: Run, domain: str) -> tuple[list[Block], list[dict]]:
    """Overlay figure and notes for one target domain of ``run``, plus JSON records of each overlay."""
    dom = run.domains[domain]
    stage = "after" if dom["after"] is not None else "before"
    evaluation = dom[stage]
    label = domain_label(domain, dom)
    if evaluation is None:
        return [Note(f"{run.label} / {label}: not evaluated, no overlays.")], []
    k = max(evaluation["clicks"])
    before = None
    if stage == "after" and dom["before"] is not None:
        before = {(e["case"], e["class"]): e for e in dom["before"].get("per_case", [])}
    blocks: list[Block] = []
    records: list[dict] = []
    rows: list[tuple[OverlayCase, CaseVolumes]] = []
    for pick in select_cases(evaluation, k):
        e = pick.entry
        what = f"{run.label} / {label} / {pick.ranks} (case {e['case']}, class {e['class']})"
        record = {"run": run.label, "domain": domain, "rank": pick.ranks, "case": e["case"], "class": e["class"],
                  "stage": stage, "clicks": k, "dice": pick.dice, "shown": False, "note": None, "figure": None}
        try:
            loaded, partial = load_case(run, e, stage, None if before is None else before.get((e["case"], e["class"]), {}))
        except InputError as exc:
            record["note"] = f"Overlay skipped for {what}: {exc}"
            blocks.append(Note(record["note"], warning=True))
        else:
            rows.append((pick, loaded))
            record["shown"] = True
            if partial:
                record["note"] = f"{what}: {partial}"
                blocks.append(Note(record["note"], warning=True))
        records.append(record)
    if not records:
        blocks.append(Note(f"{run.label} / {label}: no per-case results at {k} clicks, no overlays."))
    if rows:
        name = _slug(f"overlay_{run.label}_{domain}")
        caption = (f"{run.label} / {label}: best, median and worst case by {stage} Dice at {k} clicks, slices through the "
                   "object's centre of mass, radiological view (patient's right on the image left). Green: ground truth; "
                   f"red: {stage} prediction" + ("; yellow dashed: frozen core (before)." if before is not None else "."))
        for record in records:
            record["figure"] = name if record["shown"] else None
        blocks.insert(0, Figure(name, _draw(rows, stage, before is not None), caption))
    return blocks, records


def _resolve(run: Run, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else run.path / path


def load_case(run: Run, entry: dict, stage: str, before_entry: dict | None) -> tuple[CaseVolumes, str | None]:
    """Image, label and prediction masks of one case × class (RAS order); a note when partial.

    ``before_entry`` is the frozen core's per-case entry to draw as well (None: not evaluated).
    """
    paths = {key: _resolve(run, entry.get(key)) for key in ("image", "label", "prediction")}
    for key, path in paths.items():
        if path is None:
            raise InputError(f"no {key} path recorded in metrics.json")
        if not path.is_file():
            raise InputError(f"{key} file {path} not found")
    image = load_volume(paths["image"], kind="image")
    label = load_volume(paths["label"], kind="label").array
    label_id = entry.get("label_id")
    masks = {"label": label == label_id if label_id is not None else label > 0,
             stage: load_volume(paths["prediction"], kind="label").array > 0}
    partial = None
    if before_entry is not None:
        before_path = _resolve(run, before_entry.get("prediction"))
        if before_path is not None and before_path.is_file():
            masks["before"] = load_volume(before_path, kind="label").array > 0
        else:
            partial = f"frozen-core prediction {before_path or '(no path recorded)'} not found; only the adapted model is drawn"
    for key, mask in masks.items():
        if mask.shape != image.shape:
            raise InputError(f"{key} grid {mask.shape} differs from the image grid {image.shape}")
    ornt = nib.orientations.io_orientation(image.affine)
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = image.spacing[axis]
    return CaseVolumes(
        image=nib.orientations.apply_orientation(image.array, ornt),
        masks={key: nib.orientations.apply_orientation(m, ornt) for key, m in masks.items()},
        spacing=(spacing[0], spacing[1], spacing[2]),
    ), partial


def _centre(data: CaseVolumes) -> tuple[int, int, int]:
    for key in ("label", "after", "before"):
        mask = data.masks.get(key)
        if mask is not None and mask.any():
            return tuple(round(c) for c in ndimage.center_of_mass(mask))  # type: ignore[return-value]
    return tuple(s // 2 for s in data.image.shape)  # type: ignore[return-value]


def _draw(rows: list[tuple[OverlayCase, CaseVolumes]], stage: str, with_before: bool) -> bytes:
    fig = new_figure(10, 3.1 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), len(VIEWS), squeeze=False)
    for r, (pick, data) in enumerate(rows):
        centre = _centre(data)
        cuts = [tuple(centre[a] if a == axis else slice(None) for a in range(3)) for _, axis, _ in VIEWS]
        lo, hi = np.percentile(np.concatenate([data.image[cut].ravel() for cut in cuts]), [1, 99])
        for c, ((view, axis, (h, v)), cut) in enumerate(zip(VIEWS, cuts)):
            ax = axes[r][c]
            ax.imshow(data.image[cut].T, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6),
                      aspect=data.spacing[v] / data.spacing[h], interpolation="nearest")
            for key, style in (("label", "-"), ("before", "--"), (stage, "-")):
                mask = data.masks.get(key)
                if mask is not None and mask[cut].any():  # ground truth drawn wider, so it shows under a perfect prediction
                    ax.contour(mask[cut].T.astype(np.float32), levels=[0.5], colors=COLOURS[key],
                               linestyles=style, linewidths=2.4 if key == "label" else 1.1)
            _orient(ax, h, v)
            ax.set_title(f"{view} {'xyz'[axis]}={centre[axis]}", fontsize=9)
        e = pick.entry
        axes[r][0].set_ylabel(f"{pick.ranks}\n{e['case']} / {e['class']}\n{stage} Dice {100 * pick.dice:.1f}", fontsize=9)
    handles = [Line2D([], [], color=COLOURS["label"], label="ground truth"),
               Line2D([], [], color=COLOURS[stage], label=f"{stage} prediction")]
    if with_before:
        handles.append(Line2D([], [], color=COLOURS["before"], ls="--", label="before (frozen core)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    return to_png(fig)


def _orient(ax, h: int, v: int) -> None:
    """Radiological display (patient's right / anterior on the image left), with side letters."""
    ax.invert_xaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    box = {"boxstyle": "square,pad=0.1", "facecolor": "black", "alpha": 0.5, "linewidth": 0}
    for text, x, y, ha, va in ((SIDES[h][0], 0.01, 0.5, "left", "center"), (SIDES[h][1], 0.99, 0.5, "right", "center"),
                               (SIDES[v][0], 0.5, 0.99, "center", "top"), (SIDES[v][1], 0.5, 0.01, "center", "bottom")):
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=7, bbox=box)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)
