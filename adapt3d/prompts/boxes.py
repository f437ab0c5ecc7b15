"""Simulated 3D bounding-box prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapt3d.masks import MaskLike, as_mask, bounding_box

Box = tuple[tuple[int, int, int], tuple[int, int, int]]


def box_from_mask(
    gt: MaskLike,
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
    shape: Sequence[int] | None = None,
) -> Box:
    """Bounding box ``(lo, hi)`` of a non-empty mask in array order; ``hi`` is exclusive.

    ``gt[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]`` holds the whole object. With ``jitter`` > 0
    each of the six faces moves independently by a uniform random offset in
    ``[-jitter, +jitter]`` times the box side along that axis (rounded to whole voxels, drawn
    from the seeded ``rng``), then the box is clipped to ``[0, shape)`` (default ``gt.shape``)
    and kept at least one voxel thick.
    """
    mask = as_mask(gt, "gt")
    if not mask.any():
        raise ValueError("gt is empty: there is no object to box")
    if not (np.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter must be a finite fraction >= 0, got {jitter}")
    bounds = np.asarray(mask.shape if shape is None else shape, dtype=np.int64)
    if bounds.shape != (3,) or (bounds < 1).any():
        raise ValueError(f"shape must be three positive sizes, got {shape}")
    box = bounding_box(mask)
    lo = np.array([s.start for s in box], dtype=np.int64)
    hi = np.array([s.stop for s in box], dtype=np.int64)
    if jitter > 0:
        if rng is None:
            raise ValueError("box jitter needs a seeded numpy Generator (rng)")
        side = hi - lo
        lo = lo + np.rint(rng.uniform(-jitter, jitter, 3) * side).astype(np.int64)
        hi = hi + np.rint(rng.uniform(-jitter, jitter, 3) * side).astype(np.int64)
    lo = np.clip(lo, 0, bounds - 1)
    hi = np.clip(np.maximum(hi, lo + 1), 1, bounds)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)  # type: ignore[return-value]
