"""Simulated clicks for interactive 3D segmentation: first click, corrective clicks, batching.

Conventions shared by every function here:

* Masks are 3D boolean arrays (numpy, or torch tensors, which are converted); integer/float
  arrays are accepted when every value is 0 or 1. Positions are voxel indices in array order.
* Connected components use **6-connectivity** (voxels sharing a face), scipy's default: two
  error blobs that touch only at an edge or corner are separate regions, each needing its click.
* "Deepest point" = maximum of the Euclidean distance transform of the region, computed in mm
  when ``spacing`` is given (anisotropic voxels), on the region's bounding box padded by one
  background voxel, so the **volume border counts as boundary** (as in SAM-Med3D's and RITM's
  click simulation): an object cut by the crop is clicked away from the cut.
* Ties are broken deterministically when ``rng`` is None: among equally large regions, false
  negatives before false positives, then scan order; among equally deep voxels, the one
  nearest to the centroid of the tied voxels, then the lowest index (so a box or slab is
  clicked at its centre, not at a corner of its deepest plateau). With a seeded
  :class:`numpy.random.Generator`, ties are drawn uniformly. Same inputs and seed, same clicks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage

from adapt3d.masks import MaskLike, as_mask, as_mask_pair, as_spacing, bounding_box
from adapt3d.registry import Registry


@dataclass(frozen=True)
class Click:
    """One click: a voxel index ``position`` (array order) and its polarity."""

    position: tuple[int, int, int]
    positive: bool

    @property
    def label(self) -> int:
        """The SAM point label: 1 for a positive click, 0 for a negative one."""
        return int(self.positive)


def _pick(n: int, rng: np.random.Generator | None) -> int:
    """Index of the chosen one among ``n`` tied candidates."""
    return 0 if rng is None else int(rng.integers(n))


def _deepest(region: np.ndarray, spacing: tuple[float, float, float] | None, rng: np.random.Generator | None) -> tuple[int, int, int]:
    """The voxel of a non-empty ``region`` farthest from its boundary (volume border included).

    Without ``rng``, equally deep voxels (a plateau) resolve to the one nearest (in mm) to the
    plateau's centroid, then to the lowest index; with ``rng``, to a uniform draw among them.
    """
    box = bounding_box(region)
    padded = np.pad(region[box], 1)
    depth = ndimage.distance_transform_edt(padded, sampling=spacing)
    ties = np.argwhere(depth == depth.max())
    if rng is not None:
        local = ties[_pick(len(ties), rng)]
    else:
        scale = np.ones(3) if spacing is None else np.asarray(spacing)
        local = ties[np.argmin((((ties - ties.mean(axis=0)) * scale) ** 2).sum(axis=1))]
    return tuple(int(b.start + i - 1) for b, i in zip(box, local))  # type: ignore[return-value]


def _largest_region_click(
    regions: Sequence[tuple[np.ndarray, bool]],
    spacing: tuple[float, float, float] | None,
    rng: np.random.Generator | None,
) -> Click | None:
    """Click the deepest point of the largest connected component among ``(mask, positive)`` regions.

    Sizes are compared in voxels, which ranks components exactly as mm³ would (every voxel has
    the same volume). Returns None when every region is empty.
    """
    union = np.logical_or.reduce([mask for mask, _ in regions])
    if not union.any():
        return None
    crop = bounding_box(union)
    candidates: list[tuple[np.ndarray, int, bool]] = []
    best = 0
    for mask, positive in regions:
        labels, n = ndimage.label(mask[crop])
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        top = int(sizes.max())
        if top < best:
            continue
        if top > best:
            best, candidates = top, []
        candidates += [(labels, int(lab) + 1, positive) for lab in np.flatnonzero(sizes == top)]
    labels, lab, positive = candidates[_pick(len(candidates), rng)]
    local = _deepest(labels == lab, spacing, rng)
    position = tuple(int(c.start + i) for c, i in zip(crop, local))
    return Click(position, positive)  # type: ignore[arg-type]


def first_click(
    gt: MaskLike,
    spacing: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
) -> Click:
    """Positive click at the deepest interior point of the object's largest connected component."""
    click = _largest_region_click([(as_mask(gt, "gt"), True)], as_spacing(spacing), rng)
    if click is None:
        raise ValueError("gt is empty: there is no object to click")
    return click


def next_click(
    pred: MaskLike,
    gt: MaskLike,
    spacing: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
) -> Click | None:
    """Corrective click at the centre (deepest point) of the largest error region.

    Errors are FN = gt & ~pred (clicked positive) and FP = pred & ~gt (clicked negative); the
    largest connected component among both wins. None when the prediction is exact.
    """
    p, g = as_mask_pair(pred, gt)
    return _largest_region_click([(g & ~p, True), (p & ~g, False)], as_spacing(spacing), rng)


def random_error_click(pred: MaskLike, gt: MaskLike, rng: np.random.Generator) -> Click | None:
    """Click a voxel drawn uniformly among all error voxels; positive when it is a false negative.

    This is the click simulation of official SAM-Med3D training. None when there is no error.
    """
    p, g = as_mask_pair(pred, gt)
    errors = np.flatnonzero(p != g)
    if errors.size == 0:
        return None
    flat = int(errors[rng.integers(errors.size)])
    position = tuple(int(i) for i in np.unravel_index(flat, g.shape))
    return Click(position, bool(g.flat[flat]))  # type: ignore[arg-type]


def clicks_to_tensors(batch: Sequence[Sequence[Click]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (B, N, 3) float32 and labels (B, N) int64 for ``SamMed3D.decode``.

    N is the longest click list; shorter lists are padded with point (0, 0, 0) and label -1,
    which the SAM prompt encoder treats as "no point".
    """
    n = max((len(clicks) for clicks in batch), default=0)
    points = torch.zeros(len(batch), n, 3, dtype=torch.float32)
    labels = torch.full((len(batch), n), -1, dtype=torch.int64)
    for b, clicks in enumerate(batch):
        for i, click in enumerate(clicks):
            points[b, i] = torch.tensor(click.position, dtype=torch.float32)
            labels[b, i] = click.label
    return points, labels


class ClickSimulator(Protocol):
    """A click policy: the next click given the current prediction (None before the first click)."""

    def __call__(
        self,
        pred: MaskLike | None,
        gt: MaskLike,
        rng: np.random.Generator | None = None,
        spacing: Sequence[float] | None = None,
    ) -> Click | None: ...


CLICK_SIMULATORS: Registry[ClickSimulator] = Registry("click simulator")


def _current(pred: MaskLike | None, gt: MaskLike) -> MaskLike:
    """The prediction to correct: an empty one before the first click."""
    return np.zeros(as_mask(gt, "gt").shape, dtype=bool) if pred is None else pred


@CLICK_SIMULATORS.register("center")
def center_clicks(
    pred: MaskLike | None,
    gt: MaskLike,
    rng: np.random.Generator | None = None,
    spacing: Sequence[float] | None = None,
) -> Click | None:
    """Evaluation protocol: object centre first (:func:`first_click`), then :func:`next_click`.

    Before the first click the whole object is the error, so this is ``first_click`` (None if
    ``gt`` is empty).
    """
    return next_click(_current(pred, gt), gt, spacing, rng)


@CLICK_SIMULATORS.register("random")
def random_clicks(
    pred: MaskLike | None,
    gt: MaskLike,
    rng: np.random.Generator | None = None,
    spacing: Sequence[float] | None = None,
) -> Click | None:
    """Training protocol: a uniformly random object voxel first, then :func:`random_error_click`.

    Needs a seeded ``rng``; ``spacing`` is accepted for a uniform signature and not used.
    """
    if rng is None:
        raise ValueError("the 'random' click simulator needs a seeded numpy Generator (rng)")
    return random_error_click(_current(pred, gt), gt, rng)
