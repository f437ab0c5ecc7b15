"""Quality control: on a fully labelled volume, hide the non-keyframe slices, propagate, score.

Scores per class present in the full label (JSON-ready; NaN written as null):

* ``dice``: Dice of the pseudo-label against the hidden truth over the non-keyframe voxels that
  were not ignored (keyframes are excluded: they are copied, not predicted); null when every
  hidden voxel of the class was ignored and nothing else was labelled as it (nothing to score);
* ``dice_all``: Dice over every non-keyframe voxel of the labels obtained without an uncertain
  band (each voxel to its winner at 0.5), i.e. what the propagation gives before confidence
  filtering;
* ``ignored_fraction``: the share of the class's hidden voxels that became ``ignore``;
* ``hidden_voxels``: the class's voxels outside the keyframes.

Per case, ``ignored_fraction`` is the share of all non-keyframe voxels that became ``ignore``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from adapt3d.data.imageio import Volume
from adapt3d.evaluate.metrics import dice, summarise
from adapt3d.pseudolabel.backends import propagate
from adapt3d.pseudolabel.confidence import DEFAULT_BAND, fuse
from adapt3d.pseudolabel.keyframes import IGNORE, SparseLabel, sparsify


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def qc_scores(
    pseudo: np.ndarray,
    hard: np.ndarray,
    truth: np.ndarray,
    sparse: SparseLabel,
    classes: Mapping[str, int],
    *,
    ignore: int = IGNORE,
) -> dict:
    """Scores of a pseudo-label map (and its band-free ``hard`` version) against ``truth`` (module docstring)."""
    hidden = ~sparse.known
    ignored = (pseudo == ignore) & hidden
    scored = hidden & ~ignored
    per_class = {}
    for name, class_id in classes.items():
        gt = truth == class_id
        if not gt.any():
            continue
        gt_hidden = gt & hidden
        pred = (pseudo == class_id) & scored
        nothing_scored = gt_hidden.any() and not (pred.any() or (gt & scored).any())
        per_class[name] = {
            "dice": None if nothing_scored else dice(pred, gt & scored),
            "dice_all": dice((hard == class_id) & hidden, gt_hidden),
            "ignored_fraction": _ratio(int(np.count_nonzero(gt_hidden & ignored)), int(np.count_nonzero(gt_hidden))),
            "hidden_voxels": int(np.count_nonzero(gt_hidden)),
        }
    return {
        "axis": sparse.axis,
        "keyframes": list(sparse.keyframes),
        "ignored_fraction": _ratio(int(np.count_nonzero(ignored)), int(np.count_nonzero(hidden))),
        "classes": per_class,
    }


def leave_keyframes_out(
    image: Volume,
    truth: np.ndarray,
    classes: Mapping[str, int],
    /,
    *,
    backend: str,
    axis: int,
    every: int | None = None,
    count: int | None = None,
    band: tuple[float, float] = DEFAULT_BAND,
    ignore: int = IGNORE,
    **options,
) -> tuple[np.ndarray, dict]:
    """Keep the keyframes of ``truth``, propagate them with ``backend``; the pseudo-label and its scores."""
    sparse = sparsify(truth, axis=axis, every=every, count=count)
    probs = propagate(backend, image, sparse, classes, **options)
    pseudo = fuse(probs, classes, sparse, band=band, ignore=ignore)
    hard = fuse(probs, classes, sparse, band=(0.5, 0.5), ignore=ignore)
    return pseudo, qc_scores(pseudo, hard, truth, sparse, classes, ignore=ignore)


def summarise_qc(cases: Mapping[str, dict]) -> dict:
    """Mean ± sd over cases of each class's Dice and ignored fraction, and of the case ignored fraction."""
    names = sorted({name for report in cases.values() for name in report["classes"]})

    def stats(values: list) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summarise(v for v in values if v is not None).items()}

    return {
        "classes": {
            name: {
                key: stats([r["classes"][name][key] for r in cases.values() if name in r["classes"]])
                for key in ("dice", "dice_all", "ignored_fraction")
            }
            for name in names
        },
        "ignored_fraction": stats([r["ignored_fraction"] for r in cases.values()]),
    }
