"""Where the viewer's array lies in space, and results mapped back onto it a box at a time.

The protocol sends an image as (C, X, Y, Z) in the viewer's array order with only
``image_properties["spacing"]``: no origin, no direction. adapt3d's predictor reorients every
image to RAS before the core sees it (as SAM-Med3D was trained), so the server needs the array's
axis directions. In order of precedence:

1. ``image_properties["affine"]`` (adapt3d extension): the 4×4 voxel → RAS mm matrix of the
   array as sent — exact, e.g. the NIfTI affine of a file sent in file order;
2. ``image_properties["orientation"]`` (adapt3d extension): three axis codes such as ``SAR``;
3. the server's ``--array-orientation`` (default ``SAR``).

``SAR`` means array axis 0 runs to Superior, axis 1 to Anterior, axis 2 to Right: the order
3D Slicer's SlicerNNInteractive sends (``arrayFromVolume`` is (k, j, i), the reverse of the IJK
voxel order of a RAS-stored volume). It is an assumption: a viewer whose voxel axes are flipped
(e.g. DICOM LPS: i runs Left, j Posterior) reaches the core mirrored left-right and front-back
unless its orientation (``SPL``) or affine is given. Axis *order* is what matters most to the
core; the assumption never changes where a click or mask lands on the viewer's grid, because
points come in and masks go out in the array's own voxel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from adapt3d.data.preprocess import Grid
from adapt3d.errors import ConfigError

_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))


def check_orientation(codes: str) -> str:
    """Upper-cased axis codes, one from each of L/R, P/A, I/S (ConfigError otherwise)."""
    codes = str(codes).upper()
    axes = [next((i for i, pair in enumerate(_PAIRS) if c in pair), None) for c in codes]
    if len(codes) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
        raise ConfigError(f"orientation {codes!r}: give three axis codes, one of L/R, P/A, I/S each (e.g. SAR, RAS)")
    return codes


def orientation_affine(spacing: Sequence[float], codes: str) -> np.ndarray:
    """Voxel → RAS affine of an array whose axes run along ``codes`` with ``spacing`` mm."""
    ornt = nib.orientations.axcodes2ornt(tuple(check_orientation(codes)), labels=_PAIRS)
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (ras_axis, direction) in enumerate(ornt):
        affine[int(ras_axis), axis] = direction * float(spacing[axis])
    return affine


def box_to_input(values: np.ndarray, box: tuple[slice, ...], grid: Grid) -> tuple[tuple[slice, ...], np.ndarray]:
    """``from_working_grid(order=1)`` of a working array that is ``values`` inside ``box`` and 0
    elsewhere, computed only where the result can be non-zero: (input-grid slices, values there).

    Per axis the canonical voxels whose linear interpolation touches the box are resampled from a
    zero-padded slab around it with the same sampling positions as the full resampling, so the
    result equals the full one there (and is 0 outside).
    """
    if values.size == 0:
        return tuple(slice(0, 0) for _ in box), np.zeros((0, 0, 0), values.dtype)
    zoom = np.array(grid.spacing) / np.array(grid.canonical_spacing)
    if np.allclose(zoom, 1.0) and tuple(grid.shape) == tuple(grid.canonical_shape):
        canon_box, canonical = [(b.start, b.stop) for b in box], values
    else:
        canon_box, canonical = _resample_box(values, box, grid, zoom)
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    inverse = nib.orientations.ornt_transform(identity, grid.ornt)
    out = np.ascontiguousarray(nib.orientations.apply_orientation(canonical, inverse))
    slices = []
    for ras_axis, direction in grid.ornt:
        c0, c1 = canon_box[int(ras_axis)]
        n = grid.canonical_shape[int(ras_axis)]
        slices.append(slice(c0, c1) if direction > 0 else slice(n - c1, n - c0))
    return tuple(slices), out


def _resample_box(
    values: np.ndarray, box: tuple[slice, ...], grid: Grid, zoom: np.ndarray
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Canonical-grid range per axis reached by ``box`` and the resampled values there."""
    canon_box, slab_box = [], []
    for axis in range(3):
        w0, w1, z = box[axis].start, box[axis].stop, float(zoom[axis])
        c0 = max(0, int(np.floor((w0 - 1) * z)))
        c1 = min(grid.canonical_shape[axis], int(np.ceil(w1 * z)) + 1)
        canon_box.append((c0, c1))
        slab_box.append((max(0, int(np.floor(c0 / z))), min(grid.shape[axis], int(np.floor((c1 - 1) / z)) + 2)))
    slab = np.zeros([s1 - s0 for s0, s1 in slab_box], values.dtype)
    src, dst = [], []
    for (s0, s1), b in zip(slab_box, box):
        lo, hi = max(s0, b.start), min(s1, b.stop)
        src.append(slice(lo - b.start, hi - b.start))
        dst.append(slice(lo - s0, hi - s0))
    slab[tuple(dst)] = values[tuple(src)]
    matrix = 1.0 / zoom  # the sampling positions of from_working_grid: canonical c ← working c / zoom
    offset = np.array([c0 for c0, _ in canon_box]) * matrix - np.array([s0 for s0, _ in slab_box])
    out = ndimage.affine_transform(
        slab, matrix, offset=offset, output_shape=tuple(c1 - c0 for c0, c1 in canon_box),
        order=1, mode="nearest", prefilter=False,
    )
    return canon_box, out
