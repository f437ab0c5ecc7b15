"""Read and write NIfTI volumes with their geometry, with one-line errors for bad files."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from adapt3d.atomic import atomic_file
from adapt3d.errors import InputError


@dataclass
class Volume:
    """A 3D array in the file's voxel order (i, j, k) and the affine mapping voxels to RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``RAS`` or ``LPS``."""
        return "".join(nib.orientations.aff2axcodes(self.affine))


def open_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header and affine; data read on demand), with one-line errors."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for non-NIfTI content
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def load_volume(path: str | os.PathLike, *, kind: str = "image") -> Volume:
    """Load a 3D NIfTI image (``kind="image"``, float32) or label map (``kind="label"``, int).

    A trailing singleton 4th dimension is dropped; any other non-3D shape, a truncated file,
    non-finite voxels or non-integer labels raise :class:`InputError` naming the file.
    """
    path = Path(path)
    img = open_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D volume, got {len(shape)}D shape {shape}")
    if min(shape) < 2:
        raise InputError(f"{path}: expected a 3D volume, got a degenerate shape {shape}")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise InputError(f"{path}: truncated or corrupt NIfTI data ({exc})") from exc
    if kind == "label":
        if np.issubdtype(data.dtype, np.floating):
            if not np.all(np.isfinite(data)):
                raise InputError(f"{path}: label map has NaN/Inf voxels")
            if not np.array_equal(data, np.round(data)):
                raise InputError(f"{path}: label map has non-integer values")
        if data.size and data.min() < 0:
            raise InputError(f"{path}: label map has negative values")
        array = data.astype(np.int16 if data.size == 0 or data.max() < 32768 else np.int32)
    elif kind == "image":
        array = np.asarray(data, dtype=np.float32)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: {bad} voxels are NaN/Inf")
    else:
        raise ValueError(f"kind must be 'image' or 'label', not {kind!r}")
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), header=img.header, path=path)


def save_volume(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    reference: Volume | None = None,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write ``array`` with ``affine`` atomically; the reference's header (qform/sform codes) is kept."""
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        raise InputError(f"{path}: output must end in .nii.gz or .nii")
    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    header = reference.header.copy() if reference is not None and reference.header is not None else None
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_data_dtype(array.dtype)
    if header is not None:
        img.header.set_slope_inter(1.0, 0.0)
    with atomic_file(path) as tmp:
        nib.save(img, str(tmp))
    return path
