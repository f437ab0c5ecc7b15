"""Binary-mask argument handling shared by prompts and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

MaskLike = Union[np.ndarray, torch.Tensor]


def as_mask(mask: MaskLike, name: str = "mask") -> np.ndarray:
    """A 3D boolean numpy array from a boolean (or 0/1) numpy array or torch tensor."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not ((arr == 0) | (arr == 1)).all():
        raise ValueError(f"{name} must be binary (bool or 0/1 values), got dtype {arr.dtype} with other values")
    return arr.astype(bool)


def as_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """Validated voxel size in mm along the three array axes (None stays None: unit voxels)."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be three positive finite numbers, got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def as_mask_pair(pred: MaskLike, gt: MaskLike) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``gt`` as boolean arrays of the same 3D shape."""
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} differs from gt shape {g.shape}")
    return p, g


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight bounding box of a non-empty mask, as one slice per axis."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)
