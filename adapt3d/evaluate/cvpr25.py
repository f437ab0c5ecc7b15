"""The CVPR 2025 interactive 3D challenge's protocol: its click simulation, metrics and 6-step loop.

Written from the public evaluation script (JunMa11/CVPR-MedSegFMCompetition, ``CVPR25_iter_eval.py``,
``SurfaceDice.py``); behaviour reproduced, code not copied:

* Step 1: the model gets ``imgs``, ``spacing`` and ``boxes`` (when the case has boxes; without
  them step 1 is skipped and scored 0 with time 0). Steps 2–6: one click per class each, added to
  ``clicks`` (per class ``{'fg': [...], 'bg': [...]}``, array order (z, y, x)) and ``clicks_order``,
  with ``prev_pred`` = the previous step's prediction.
* A click: the error mask ``pred != gt`` of the class, its largest 26-connected component (the
  lowest label among equally large ones), the maximum of the Euclidean distance transform of that
  component (in voxels, not mm; the component's bounding box padded by 25 % so the volume border
  counts as outside; boxes over 60 M voxels are 2× max-pooled first), one voxel drawn among the
  maxima with ``np.random.seed(42)``'s generator. Background click if ``gt`` is 0 there
  (over-segmentation), else foreground. A class with no error gets no click (``None`` in its order).
* Metrics per step, multi-class: the mean over the classes present in ``gts`` of the Dice and of
  the NSD at 2 mm (surfel-area surface Dice of Nikolov et al., MONAI's ``use_subvoxels``
  implementation, equal to the script's to float32 precision). NSD is only computed when the mean
  Dice exceeds 0.2 (else 0), and with ``spacing`` as stored in the npz applied to the array axes in
  order — the script does this although the files store (x, y, z) and the arrays are (z, y, x).
* DSC_AUC / NSD_AUC: trapezoid rule, unit step, over the last 5 steps (the click steps) — the box
  step is excluded because boxes are optional. Final DSC / NSD: step 6. Time: per step (the
  model's call only), and total.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

N_CLICKS = 5
NSD_DICE_GATE = 0.2
_LARGE_ROI = 60_000_000
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)

#: A predictor: the npz keys of one step (as the challenge's loop writes them) → ``segs`` (z, y, x).
StepPredictor = Callable[[dict], np.ndarray]


@dataclass(frozen=True)
class ChallengeClick:
    """One simulated click of the challenge: a voxel (z, y, x) and whether it is foreground."""

    position: tuple[int, int, int]
    foreground: bool


def _component_depth(component: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Distance transform (voxels) of ``component`` on its bounding box, as the script computes it."""
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    crop = component[box]
    pad = np.maximum((np.array(crop.shape) * 0.25).astype(int), 1)
    padded = np.pad(crop, [(int(p), int(p)) for p in pad]).astype(np.uint8)
    if padded.size > _LARGE_ROI:  # the script max-pools 2× (zero-filled to even sizes), then repeats back
        even = np.pad(padded, [(0, s % 2) for s in padded.shape])
        pooled = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2, even.shape[2] // 2, 2).max(axis=(1, 3, 5))
        depth = ndimage.distance_transform_edt(pooled)
        depth = depth.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    else:
        depth = ndimage.distance_transform_edt(padded)
    inner = tuple(slice(int(p), int(p) + n) for p, n in zip(pad, crop.shape))
    return depth[inner] * crop, box


def challenge_click(pred: np.ndarray, gt: np.ndarray) -> ChallengeClick | None:
    """The challenge's next click for one class (boolean masks, (z, y, x)); None when ``pred == gt``."""
    error = np.asarray(pred, dtype=bool) != np.asarray(gt, dtype=bool)
    if not error.any():
        return None
    labels, _ = ndimage.label(error, structure=_CONNECTIVITY_26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    component = labels == int(np.argmax(sizes))
    depth, box = _component_depth(component)
    if not depth.any():
        depth = component[box].astype(float)
    maxima = np.argwhere(depth == depth.max())
    local = maxima[np.random.RandomState(42).choice(len(maxima))]
    position = tuple(int(s.start + i) for s, i in zip(box, local))
    return ChallengeClick(position, bool(np.asarray(gt, dtype=bool)[position]))  # type: ignore[arg-type]


# -- metrics -----------------------------------------------------------------------------------
def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|) (NaN when both are empty, as the script's ``compute_dice_coefficient``)."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    return float("nan") if total == 0 else 2.0 * int(np.count_nonzero(pred & gt)) / total


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Surfel-area normalised surface Dice of two boolean masks (``spacing`` per array axis)."""
    from monai.metrics import compute_surface_dice

    if not pred.any():
        return 0.0 if gt.any() else float("nan")
    union = np.argwhere(pred | gt)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(union.min(0), union.max(0)))
    p, g = (np.pad(m[box], 1) for m in (pred, gt))  # outside the volume counts as background
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_surface_dice(
            torch.from_numpy(p)[None, None].float(), torch.from_numpy(g)[None, None].float(), [float(tolerance_mm)],
            include_background=True, spacing=[float(s) for s in spacing], use_subvoxels=True,
        )
    return float(value.item())


def class_scores(gts: np.ndarray, segs: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> tuple[list[float], list[float]]:
    """Per-class Dice and NSD over the classes present in ``gts`` (sorted); NSD all 0 when the mean
    Dice is ≤ 0.2, as the script does."""
    classes = [int(c) for c in np.unique(gts) if c != 0]
    dices = [dice_score(segs == c, gts == c) for c in classes]
    if not dices or float(np.mean(dices)) <= NSD_DICE_GATE:
        return dices, [0.0] * len(classes)
    return dices, [surface_dice(segs == c, gts == c, spacing, tolerance_mm) for c in classes]


def auc(values: Sequence[float], n_clicks: int = N_CLICKS) -> float:
    """Trapezoid area, unit step, under the last ``n_clicks`` values (the click steps)."""
    v = np.asarray(values[-n_clicks:], dtype=float)
    return float(np.sum((v[1:] + v[:-1]) / 2.0))


# -- the loop ----------------------------------------------------------------------------------
@dataclass
class CaseRun:
    """What the challenge's loop records for one image."""

    dsc: list[float] = field(default_factory=list)  # multi-class mean, per step
    nsd: list[float] = field(default_factory=list)
    class_dsc: list[list[float]] = field(default_factory=list)  # per step, per class
    class_nsd: list[list[float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    clicks: list[dict] = field(default_factory=list)
    clicks_order: list[list] = field(default_factory=list)
    segs: list[np.ndarray] = field(default_factory=list)

    def summary(self, n_clicks: int = N_CLICKS) -> dict:
        """The script's CSV fields of this image."""
        return {"DSC_AUC": auc(self.dsc, n_clicks), "NSD_AUC": auc(self.nsd, n_clicks), "DSC_Final": self.dsc[-1],
                "NSD_Final": self.nsd[-1], "TotalRunningTime": float(sum(self.seconds))}


def run_case(imgs: np.ndarray, spacing: Sequence[float], gts: np.ndarray, boxes: list[dict] | None, predict: StepPredictor,
             *, n_clicks: int = N_CLICKS, tolerance_mm: float = 2.0) -> CaseRun:
    """Run the challenge's interactive loop on one image with ``predict`` and score every step."""
    classes = [int(c) for c in np.unique(gts) if c != 0]
    run = CaseRun(clicks=[{"fg": [], "bg": []} for _ in classes], clicks_order=[[] for _ in classes])
    spacing = np.asarray(spacing, dtype=np.float64)
    segs = np.zeros(gts.shape, dtype=np.uint8)
    for step in range(n_clicks + 1):
        if step == 0 and boxes is None:
            run.dsc.append(0.0), run.nsd.append(0.0), run.seconds.append(0.0)
            run.class_dsc.append([0.0] * len(classes)), run.class_nsd.append([0.0] * len(classes))
            continue
        inputs: dict = {"imgs": imgs, "spacing": spacing}
        if boxes is not None:
            inputs["boxes"] = boxes
        if step > 0:
            for i, cls in enumerate(classes):
                click = challenge_click(segs == cls, gts == cls)
                if click is None:
                    run.clicks_order[i].append(None)
                    continue
                kind = "fg" if click.foreground else "bg"
                run.clicks[i][kind].append(list(click.position))
                run.clicks_order[i].append(kind)
            inputs.update(clicks=run.clicks, clicks_order=run.clicks_order, prev_pred=segs)
        start = time.perf_counter()
        segs = np.asarray(predict(inputs)).astype(np.uint8)
        run.seconds.append(time.perf_counter() - start)
        if segs.shape != gts.shape:
            raise ValueError(f"the predictor returned segs of shape {segs.shape}, expected {gts.shape}")
        dices, nsds = class_scores(gts, segs, spacing, tolerance_mm)
        run.class_dsc.append(dices), run.class_nsd.append(nsds)
        run.dsc.append(float(np.mean(dices))), run.nsd.append(float(np.mean(nsds)))
        run.segs.append(segs)
    return run
