"""Read and write 3D volumes with their exact geometry: one reader/writer per file ending.

NIfTI (``.nii``, ``.nii.gz``) goes through nibabel (header, qform/sform codes kept); MetaImage
(``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``) through SimpleITK, as nnU-Net v2 reads them.
Every volume is held the same way whatever its format: the array in the file's voxel order
(i, j, k) and the affine mapping voxels to RAS mm (ITK's LPS geometry with x and y negated), so
one volume stored in any of these formats gives the same array and affine. A volume written to
the format it was read from keeps the geometry values as read (ITK spacing, origin, direction;
the NIfTI header). Formats are a registry keyed by file ending (:func:`register_format`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from adapt3d.atomic import atomic_file, writable_dir
from adapt3d.errors import ConfigError, InputError, OutputError

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)


@dataclass
class Volume:
    """A 3D array in the file's voxel order (i, j, k) and the affine mapping voxels to RAS mm.

    ``header`` is the format's own record of the file (a nibabel header for NIfTI, an
    :class:`ItkGeometry` for MetaImage/NRRD), used to write results with the input's exact values.
    """

    array: np.ndarray
    affine: np.ndarray
    header: object | None = None
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


@dataclass(frozen=True)
class Opened:
    """A file whose header has been read: shape (all dimensions), RAS affine, header, and its voxels on demand."""

    shape: tuple[int, ...]
    affine: np.ndarray
    header: object | None
    data: Callable[[], np.ndarray]


@dataclass(frozen=True)
class ImageFormat:
    """A volume file format: its endings, how to open a file (header only) and how to write one."""

    name: str
    endings: tuple[str, ...]
    open: Callable[[Path], Opened]
    write: Callable[[np.ndarray, np.ndarray, Path, object | None], None]  # array, affine, final path, reference header
    data_endings: tuple[str, ...] = ()  # endings of the separate data file a detached header (.mhd, .nhdr) names


FORMATS: dict[str, ImageFormat] = {}  # file ending -> format, in registration order


def register_format(fmt: ImageFormat) -> ImageFormat:
    """Register ``fmt`` under each of its endings."""
    for ending in fmt.endings:
        if ending in FORMATS:
            raise ValueError(f"image file ending {ending!r} is already registered")
        FORMATS[ending] = fmt
    return fmt


def supported_endings() -> tuple[str, ...]:
    """The file endings volumes can be read from and written to (``.nii.gz`` first)."""
    return tuple(FORMATS)


def _endings_text() -> str:
    *rest, last = supported_endings()
    return f"{', '.join(rest)} or {last}"


def ending_of(path: str | os.PathLike) -> str | None:
    """The registered ending ``path`` ends with (the longest, so ``.nii.gz`` beats ``.nii``), or None.

    Endings are matched in lower case only, as nnU-Net does (ITK's MetaImage writer renames ``.MHA``).
    """
    name = Path(path).name
    matches = [e for e in FORMATS if name.endswith(e) and len(name) > len(e)]
    return max(matches, key=len) if matches else None


def strip_ending(path: str | os.PathLike) -> str:
    """The file name of ``path`` without its image ending (``case_0000.nii.gz`` -> ``case_0000``)."""
    name, ending = Path(path).name, ending_of(path)
    return name[: -len(ending)] if ending else name


def data_files(path: str | os.PathLike) -> list[Path]:
    """The separate data files beside a detached header (``x.mhd`` -> ``x.zraw``) that exist; [] otherwise."""
    path = Path(path)
    ending = ending_of(path)
    if ending is None:
        return []
    stem = path.with_name(strip_ending(path))
    return [p for p in (Path(f"{stem}{e}") for e in FORMATS[ending].data_endings) if p.is_file()]


def is_data_file(path: str | os.PathLike, ending: str) -> bool:
    """Whether ``path`` is a data file that headers of ``ending``'s format may name (e.g. ``.zraw`` for ``.mhd``)."""
    fmt = FORMATS.get(ending)
    return fmt is not None and Path(path).name.endswith(fmt.data_endings)


def check_output_ending(path: str | os.PathLike) -> str:
    """The ending of an output path, which decides its format; :class:`ConfigError` naming it if unsupported.

    Call it on every output volume path before expensive work (``predict --out``, exports).
    """
    ending = ending_of(path)
    if ending is None:
        raise ConfigError(f"{path}: output must end in {_endings_text()} (the ending decides the format)")
    return ending


def _format_of(path: Path) -> ImageFormat:
    ending = ending_of(path)
    if ending is None:
        raise InputError(f"{path}: not a supported image file (ending must be {_endings_text()})")
    return FORMATS[ending]


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``shape`` as 3D (a trailing singleton 4th dimension dropped); InputError if not a usable volume."""
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D volume, got {len(shape)}D shape {shape}")
    if min(shape) < 2:
        raise InputError(f"{path}: expected a 3D volume, got a degenerate shape {shape}")
    return shape  # type: ignore[return-value]


def open_image(path: str | os.PathLike) -> Opened:
    """Open a volume file by its ending, reading only its header; one-line errors for bad files."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image file")
    return fmt.open(path)


def read_geometry(path: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of a 3D volume file, from its header only (voxels not read)."""
    opened = open_image(path)
    return _spatial_shape(Path(path), opened.shape), np.asarray(opened.affine, dtype=np.float64)


def load_volume(path: str | os.PathLike, *, kind: str = "image") -> Volume:
    """Load a 3D image (``kind="image"``, float32) or label map (``kind="label"``, int) of any supported format.

    A trailing singleton 4th dimension is dropped; any other non-3D shape, a truncated file,
    non-finite voxels or non-integer labels raise :class:`InputError` naming the file.
    """
    if kind not in ("image", "label"):
        raise ValueError(f"kind must be 'image' or 'label', not {kind!r}")
    path = Path(path)
    opened = open_image(path)
    shape = _spatial_shape(path, opened.shape)
    data = opened.data().reshape(shape)
    if kind == "label":
        if np.issubdtype(data.dtype, np.floating):
            if not np.all(np.isfinite(data)):
                raise InputError(f"{path}: label map has NaN/Inf voxels")
            if not np.array_equal(data, np.round(data)):
                raise InputError(f"{path}: label map has non-integer values")
        if data.size and data.min() < 0:
            raise InputError(f"{path}: label map has negative values")
        array = data.astype(np.int16 if data.size == 0 or data.max() < 32768 else np.int32)
    else:
        array = np.asarray(data, dtype=np.float32)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: {bad} voxels are NaN/Inf")
    return Volume(array=array, affine=np.asarray(opened.affine, dtype=np.float64), header=opened.header, path=path)


def save_volume(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    reference: Volume | None = None,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write ``array`` with ``affine`` atomically in the format of ``path``'s ending.

    The reference's header is kept when it is of the same format (NIfTI qform/sform codes; the
    ITK geometry values as read, when ``affine`` is the reference's).
    """
    path = Path(path)
    fmt = FORMATS[check_output_ending(path)]
    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    header = reference.header if reference is not None else None
    fmt.write(array, np.asarray(affine, dtype=np.float64), path, header)
    return path


# ---------------------------------------------------------------- NIfTI (nibabel)


def _open_nifti(path: Path) -> Opened:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for non-NIfTI content
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")

    def data() -> np.ndarray:
        try:
            return np.asanyarray(img.dataobj)
        except (EOFError, OSError, zlib.error, ValueError) as exc:
            raise InputError(f"{path}: truncated or corrupt NIfTI data ({exc})") from exc

    return Opened(tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64), img.header, data)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, header: object | None) -> None:
    header = header.copy() if isinstance(header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_data_dtype(array.dtype)
    if header is not None:
        img.header.set_slope_inter(1.0, 0.0)
    with atomic_file(path) as tmp:
        nib.save(img, str(tmp))


register_format(ImageFormat("NIfTI", (".nii.gz", ".nii"), _open_nifti, _write_nifti))


# ---------------------------------------------------------------- MetaImage and NRRD (SimpleITK)


@dataclass(frozen=True)
class ItkGeometry:
    """Spatial values of a 3D ITK image as read (LPS): spacing, origin, row-major direction matrix."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def affine(self) -> np.ndarray:
        """Voxel (i, j, k) -> RAS mm."""
        out = np.eye(4)
        out[:3, :3] = _LPS @ np.reshape(self.direction, (3, 3)) * np.asarray(self.spacing)
        out[:3, 3] = _LPS @ np.asarray(self.origin)
        return out

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> ItkGeometry:
        """The ITK values of a voxel -> RAS affine (columns must be non-zero)."""
        linear = _LPS @ affine[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        direction = linear / spacing
        return cls(tuple(float(s) for s in spacing), tuple(float(v) for v in _LPS @ affine[:3, 3]), tuple(float(v) for v in direction.ravel()))  # type: ignore[arg-type]


def _itk_problem(exc: Exception) -> str:
    """The first informative line of an ITK exception text."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    described = [ln for ln in lines if ln.lower().startswith("description:")]
    return (described or lines or [type(exc).__name__])[-1].removeprefix("Description:").strip()


def _open_itk(path: Path) -> Opened:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image file ({_itk_problem(exc)})") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(f"{path}: {reader.GetNumberOfComponents()} components per voxel; expected a scalar (grey-level) volume")
    size, dim = tuple(int(s) for s in reader.GetSize()), reader.GetDimension()
    if dim < 3:
        raise InputError(f"{path}: expected a 3D volume, got {dim}D shape {size}")
    direction = np.reshape(reader.GetDirection(), (dim, dim))[:3, :3]
    geometry = ItkGeometry(tuple(reader.GetSpacing())[:3], tuple(reader.GetOrigin())[:3], tuple(float(v) for v in direction.ravel()))  # type: ignore[arg-type]

    def data() -> np.ndarray:
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: truncated or corrupt image data ({_itk_problem(exc)})") from None
        return sitk.GetArrayFromImage(image).transpose()  # ITK arrays are (k, j, i)

    return Opened(size, geometry.affine, geometry, data)


def _write_itk(array: np.ndarray, affine: np.ndarray, path: Path, header: object | None) -> None:
    """Write with SimpleITK (compressed) into a temporary folder, then move every file written into place.

    ``.mhd`` and ``.nhdr`` name a separate data file: it is moved first, the header last.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    same = isinstance(header, ItkGeometry) and np.array_equal(header.affine, affine)
    geometry = header if same else ItkGeometry.from_affine(affine)
    image.SetSpacing(geometry.spacing)  # type: ignore[union-attr]
    image.SetOrigin(geometry.origin)  # type: ignore[union-attr]
    image.SetDirection(geometry.direction)  # type: ignore[union-attr]
    parent = writable_dir(path.parent if str(path.parent) else Path("."))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        sitk.WriteImage(image, str(tmp / path.name), True)
        for written in sorted(tmp.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, parent / written.name)
    except RuntimeError as exc:
        raise OutputError(f"{path}: cannot write image ({_itk_problem(exc)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


register_format(ImageFormat("MetaImage", (".mha",), _open_itk, _write_itk))
register_format(ImageFormat("MetaImage header + data file", (".mhd",), _open_itk, _write_itk, (".zraw", ".raw")))
register_format(ImageFormat("NRRD", (".nrrd",), _open_itk, _write_itk))
register_format(ImageFormat("NRRD header + data file", (".nhdr",), _open_itk, _write_itk, (".raw.gz", ".raw")))
