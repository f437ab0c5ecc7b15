"""Spatial and intensity preprocessing as SAM-Med3D does it, with exact maps back to the input grid.

Pipeline of the official inference: reorient to RAS, (CT) clamp to [-1000, 1000] HU, resample to
1.5 mm isotropic (linear for images, nearest for labels, origin kept), crop or zero-pad a 128³
cube centred on the prompt, z-score the crop over its voxels > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from adapt3d.data.imageio import Volume
from adapt3d.registry import Registry


@dataclass(frozen=True)
class Grid:
    """How a working array relates to the input file's array: axis reorientation, then scaling."""

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    ornt: np.ndarray  # nibabel orientation transform input → RAS
    canonical_shape: tuple[int, int, int]
    canonical_spacing: tuple[float, float, float]
    spacing: tuple[float, float, float]  # working spacing (mm)
    shape: tuple[int, int, int]  # working shape

    @property
    def affine(self) -> np.ndarray:
        """Voxel → RAS mm affine of the working array."""
        can = self.input_affine @ nib.orientations.inv_ornt_aff(self.ornt, self.input_shape)
        scale = np.diag([w / c for w, c in zip(self.spacing, self.canonical_spacing)] + [1.0])
        return can @ scale

    def to_working(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel coordinates of the input array to (fractional) working-array coordinates."""
        world = self.input_affine @ np.append(np.asarray(ijk, dtype=float), 1.0)
        return (np.linalg.inv(self.affine) @ world)[:3]


def _scale_resample(array: np.ndarray, zoom: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resample so that output voxel i samples input coordinate i / zoom (origin kept)."""
    if np.allclose(zoom, 1.0) and tuple(array.shape) == tuple(shape):
        return array.copy()
    return ndimage.affine_transform(
        array, 1.0 / zoom, output_shape=tuple(shape), order=order, mode="nearest", prefilter=False
    )


def to_working_grid(
    volume: Volume, target_spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5), *, order: int = 1
) -> tuple[np.ndarray, Grid]:
    """Reorient ``volume`` to RAS and resample it to ``target_spacing`` (None keeps the spacing)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    canonical = nib.orientations.apply_orientation(volume.array, ornt)
    can_affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    can_spacing = tuple(float(s) for s in np.linalg.norm(can_affine[:3, :3], axis=0))
    spacing = can_spacing if target_spacing is None else tuple(float(s) for s in target_spacing)
    zoom = np.array(can_spacing) / np.array(spacing)
    shape = tuple(max(1, int(round(n * z))) for n, z in zip(canonical.shape, zoom))
    grid = Grid(volume.shape, volume.affine, ornt, tuple(canonical.shape), can_spacing, spacing, shape)
    data = canonical.astype(np.float32) if order else canonical
    return _scale_resample(data, zoom, shape, order), grid


def from_working_grid(array: np.ndarray, grid: Grid, *, order: int = 1) -> np.ndarray:
    """Map a working-grid array back onto the input file's voxel grid (inverse of ``to_working_grid``)."""
    zoom = np.array(grid.spacing) / np.array(grid.canonical_spacing)
    canonical = _scale_resample(array, zoom, grid.canonical_shape, order)
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    inverse = nib.orientations.ornt_transform(identity, grid.ornt)  # RAS layout → input layout
    return np.ascontiguousarray(nib.orientations.apply_orientation(canonical, inverse))


@dataclass(frozen=True)
class Window:
    """A crop of ``size`` (a cube's side, or (D, H, W)) starting at ``start`` (may extend beyond
    the array: zero-padded)."""

    start: tuple[int, int, int]
    size: int | tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The crop's shape."""
        return tuple(self.size) if isinstance(self.size, tuple) else (self.size,) * 3  # type: ignore[return-value]

    def extract(self, array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """The crop, zero-padded where it leaves the array."""
        out = np.full(self.shape, fill, dtype=array.dtype)
        src, dst = self.overlap(array.shape)
        out[dst] = array[src]
        return out

    def paste(self, crop: np.ndarray, shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
        """An array of ``shape`` holding ``crop`` at this window (``fill`` elsewhere)."""
        out = np.full(shape, fill, dtype=crop.dtype)
        src, dst = self.overlap(shape)
        out[src] = crop[dst]
        return out

    def contains(self, point: np.ndarray) -> bool:
        """Whether (fractional) voxel coordinates ``point`` lie inside the window."""
        rel = np.asarray(point, dtype=float) - np.asarray(self.start, dtype=float)
        return bool(np.all((rel >= 0) & (rel <= np.asarray(self.shape) - 1)))

    def overlap(self, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Slices of the part inside an array of ``shape``: (in the array, in the window)."""
        src, dst = [], []
        for s, n, size in zip(self.start, shape, self.shape):
            lo, hi = max(s, 0), min(s + size, n)
            src.append(slice(lo, max(lo, hi)))
            dst.append(slice(lo - s, max(lo, hi) - s))
        return tuple(src), tuple(dst)


def centred_window(center: np.ndarray, size: int | tuple[int, int, int]) -> Window:
    """The window of ``size`` whose centre voxel is ``center`` (as torchio's CropOrPad centres a mask)."""
    sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * 3
    start = tuple(int(np.floor(c + 0.5)) - n // 2 for c, n in zip(center, sizes))
    return Window(start, tuple(size) if isinstance(size, (tuple, list)) else size)  # type: ignore[arg-type]


Normaliser = Callable[[np.ndarray, str], np.ndarray]
NORMALISERS: Registry[Normaliser] = Registry("intensity normalisation")


@NORMALISERS.register("sam-med3d")
def _official(crop: np.ndarray, modality: str) -> np.ndarray:
    """SAM-Med3D: z-score over the crop's voxels > 0 (CT was clamped to [-1000, 1000] HU before)."""
    mask = crop > 0
    if not mask.any():
        return crop.astype(np.float32)
    vals = crop[mask].astype(np.float64)
    std = vals.std()
    return ((crop - vals.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


@NORMALISERS.register("modality")
def _modality(crop: np.ndarray, modality: str) -> np.ndarray:
    """CT: soft-tissue window [-160, 240] HU scaled to [0, 1] then z-scored; MR/US: z-score on foreground."""
    if modality == "CT":
        x = (np.clip(crop, -160.0, 240.0) + 160.0) / 400.0
        return ((x - x.mean()) / (x.std() or 1.0)).astype(np.float32)
    fg = crop > np.percentile(crop, 1) if crop.size else crop > 0
    vals = crop[fg] if fg.any() else crop.ravel()
    return ((crop - vals.mean()) / (vals.std() or 1.0)).astype(np.float32)


def clamp_ct(array: np.ndarray, modality: str) -> np.ndarray:
    """Clamp CT to [-1000, 1000] HU as the official pipeline does; other modalities unchanged."""
    return np.clip(array, -1000.0, 1000.0) if modality == "CT" else array


def normalise(crop: np.ndarray, modality: str, method: str = "sam-med3d") -> np.ndarray:
    """Apply the registered intensity normalisation ``method`` to a crop."""
    return NORMALISERS.get(method)(crop, modality)
