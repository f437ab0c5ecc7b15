"""Binary segmentation metrics (Dice, normalised surface Dice) and their summary statistics.

Conventions: when both masks are empty the class is absent and correctly predicted as absent,
so Dice and NSD are 1.0; when exactly one is empty both are 0.0.

NSD (normalised surface distance / surface Dice) follows the boundary-voxel definition of
MONAI's ``compute_surface_dice(..., use_subvoxels=False)``, implemented here with scipy (MONAI
gives the same values but float32-rounded, emits a deprecation warning from its own internals on
every call, and costs seconds to import): the boundary of a mask is its voxels having a face
neighbour outside the mask (the volume border counts as outside); every boundary voxel has
weight one; distances are Euclidean between voxel centres in mm (anisotropic ``spacing``
respected). NSD = (# pred boundary voxels within ``tolerance_mm`` of the gt boundary + # gt
boundary voxels within ``tolerance_mm`` of the pred boundary) / (# pred + # gt boundary voxels).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from adapt3d.masks import MaskLike, as_mask_pair, as_spacing, bounding_box


def dice(pred: MaskLike, gt: MaskLike) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|) of two binary 3D masks; 1.0 when both are empty."""
    p, g = as_mask_pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / total


def nsd(pred: MaskLike, gt: MaskLike, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice of two binary 3D masks at ``tolerance_mm`` (see module docstring)."""
    p, g = as_mask_pair(pred, gt)
    sp = as_spacing(spacing)
    if sp is None:
        raise ValueError("nsd needs the voxel spacing in mm")
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not (has_p or has_g):
        return 1.0
    if has_p != has_g:
        return 0.0
    crop = bounding_box(p | g)
    p, g = p[crop], g[crop]  # exact: every boundary voxel and its nearest partner lie in the crop
    edge_p, edge_g = _boundary(p), _boundary(g)
    to_g = ndimage.distance_transform_edt(~edge_g, sampling=sp)[edge_p]
    to_p = ndimage.distance_transform_edt(~edge_p, sampling=sp)[edge_g]
    within = int(np.count_nonzero(to_g <= tol)) + int(np.count_nonzero(to_p <= tol))
    return within / (to_g.size + to_p.size)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (outside the volume counts)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def summarise(values: Iterable[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (ddof=1) and count of the non-NaN ``values``.

    One value gives sd 0.0; no value gives mean and sd NaN with n 0.
    """
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    sd = float(arr.std(ddof=1)) if n > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "n": n}
