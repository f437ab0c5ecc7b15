"""The CVPR 2025 interactive-segmentation challenge's npz format, and conversion from/to nnU-Net raw.

One ``.npz`` per image, named ``<MODALITY>_<dataset>_<case>.npz`` (``CT_``, ``MR_``, ``US_``, ...):

* ``imgs``: uint8 (z, y, x), intensities already rescaled to 0–255 (CT: a window; other
  modalities: the 0.5–99.5 percentiles of the non-zero voxels), as SimpleITK's array of the file;
* ``spacing``: float (3,) in SimpleITK order (x, y, z) — the order the challenge's files carry
  (MedSAM's preprocessing saves ``img_sitk.GetSpacing()``); ``imgs`` is (z, y, x);
* ``gts``: uint8/uint16 (z, y, x), classes relabelled 1..N (in the image file, or alone in a file of
  the same name when labels are kept apart, as for the challenge's validation/test sets);
* ``boxes``: per class (list order = label 1..N) a dict ``z_min, z_max, z_mid, z_mid_x_min,
  z_mid_y_min, z_mid_x_max, z_mid_y_max`` (inclusive voxel indices; the 2D box on slice ``z_mid``
  widened by 0–5 voxels per 256, as the challenge's ``get_boxes.py`` does, drawn here from a
  generator seeded per file name);
* from step 2 on (written by the challenge's loop): ``clicks`` (per class ``{'fg': [...], 'bg':
  [...]}``, coordinates in array order (z, y, x)), ``clicks_order``, ``prev_pred``.

The npz has no direction and no origin. Converting to npz, the image is first reoriented to LPS
(SimpleITK's identity direction), so an npz read with the identity direction is the right anatomy;
the original affine, the label-id map and the class names go to ``adapt3d_geometry.json`` beside
the npz files, which the way back uses to restore the original grid and label ids exactly.
Without that file (the challenge's own npz), the way back writes the identity direction (LPS) at
origin 0. Intensities are not invertible: the way back writes the 0–255 values.

``boxes`` and ``clicks`` are pickled object arrays; they are read with an unpickler that only
rebuilds numpy arrays/scalars and builtin containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from adapt3d.data.imageio import Volume
from adapt3d.errors import InputError

#: Modality prefixes of the challenge's file names.
MODALITIES = ("CT", "MR", "US", "PET", "Microscopy", "Endoscopy", "XRay")
GEOMETRY_FILE = "adapt3d_geometry.json"
BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
LPS = ("L", "P", "S")
_ALLOWED_GLOBALS = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


@dataclass
class ChallengeCase:
    """One image in the challenge's representation (arrays in (z, y, x), spacing in (x, y, z))."""

    name: str  # file stem, e.g. MR_TotalSegExampleMR_ts_mr_sm
    imgs: np.ndarray
    spacing: tuple[float, float, float]
    gts: np.ndarray | None = None
    boxes: list[dict] | None = None
    extra: dict = field(default_factory=dict)  # clicks, clicks_order, prev_pred when present

    @property
    def modality(self) -> str:
        return modality_of(self.name)

    @property
    def array_spacing(self) -> tuple[float, float, float]:
        """Voxel size along the array axes (z, y, x)."""
        return tuple(float(s) for s in self.spacing[::-1])  # type: ignore[return-value]


def modality_of(name: str) -> str:
    """The modality prefix of a challenge file name (``CT_x.npz`` → ``CT``, ``MR_...`` → ``MR``); ``""`` if none."""
    prefix = Path(name).name.split("_", 1)[0]
    match = next((m for m in MODALITIES if m.lower() == prefix.lower()), "")
    return match


# -- reading -----------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a challenge npz")


def _object_member(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as raw:
        fh = io.BytesIO(raw.read())
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    read_header(fh)
    return np.asarray(_SafeUnpickler(fh).load())


def read_npz(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of ``path`` that it holds (others are never read); object arrays safely."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {Path(m).stem: m for m in zf.namelist() if m.endswith(".npy")}
            out = {}
            with np.load(path, allow_pickle=False) as plain:
                for key in keys:
                    if key not in members:
                        continue
                    try:
                        out[key] = plain[key]
                    except ValueError:  # an object array: pickled, read with the restricted unpickler
                        out[key] = _object_member(zf, members[key])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise InputError(f"{path}: not a readable npz file ({exc})") from exc
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused ({exc})") from exc
    return out


def load_challenge_case(path: str | Path, *, gts_dir: str | Path | None = None, with_labels: bool = True) -> ChallengeCase:
    """Read one challenge npz; ``gts`` from ``gts_dir/<same name>`` when given. ``with_labels=False``
    never reads a label key (what a predictor must do)."""
    path = Path(path)
    data = read_npz(path, ("imgs", "spacing", "boxes", "clicks", "clicks_order", "prev_pred") + (("gts",) if with_labels and gts_dir is None else ()))
    if "imgs" not in data:
        raise InputError(f"{path}: no 'imgs' array")
    imgs = data["imgs"]
    if imgs.ndim != 3:
        raise InputError(f"{path}: 'imgs' must be 3D (z, y, x), got shape {imgs.shape}")
    if "spacing" not in data or np.asarray(data["spacing"]).shape != (3,):
        raise InputError(f"{path}: 'spacing' must hold three voxel sizes (x, y, z)")
    spacing = tuple(float(s) for s in data["spacing"])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{path}: 'spacing' must be positive, got {spacing}")
    gts = data.get("gts")
    if with_labels and gts_dir is not None:
        gt_path = Path(gts_dir) / path.name
        gts = read_npz(gt_path, ("gts",)).get("gts")
        if gts is None:
            raise InputError(f"{gt_path}: no 'gts' array")
    if gts is not None and gts.shape != imgs.shape:
        raise InputError(f"{path}: 'gts' shape {gts.shape} differs from 'imgs' {imgs.shape}")
    boxes = None if "boxes" not in data else [_box(b, path) for b in data["boxes"]]
    extra = {k: data[k] for k in ("clicks", "clicks_order", "prev_pred") if k in data}
    return ChallengeCase(path.stem, imgs, spacing, gts, boxes, extra)  # type: ignore[arg-type]


def _box(entry: object, path: Path) -> dict:
    if not isinstance(entry, dict) or any(k not in entry for k in BOX_KEYS):
        raise InputError(f"{path}: each 'boxes' entry must be a dict with {', '.join(BOX_KEYS)}")
    return {k: int(entry[k]) for k in BOX_KEYS}


# -- writing -----------------------------------------------------------------------------------
def write_challenge_npz(path: Path, case: ChallengeCase, *, include_gts: bool = True) -> Path:
    """Write ``case`` as a challenge npz (compressed): imgs, spacing, boxes, and gts if asked."""
    arrays: dict = {"imgs": case.imgs, "spacing": np.asarray(case.spacing, dtype=np.float64)}
    if include_gts and case.gts is not None:
        arrays["gts"] = case.gts
    if case.boxes is not None:
        arrays["boxes"] = np.array(case.boxes, dtype=object)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def write_gts_npz(path: Path, gts: np.ndarray) -> Path:
    """A labels-only npz (key ``gts``), as the challenge keeps validation/test labels apart."""
    with open(path, "wb") as fh:
        np.savez_compressed(fh, gts=gts)
    return path


# -- intensities, geometry, labels, boxes ------------------------------------------------------
def to_uint8(array: np.ndarray, modality: str, ct_window: tuple[float, float] = (40.0, 400.0)) -> np.ndarray:
    """Challenge intensities: CT windowed (level, width) to 0–255; others the 0.5–99.5 percentiles of
    the non-zero voxels to 0–255, zero voxels kept at 0."""
    a = np.asarray(array, dtype=np.float64)
    if modality == "CT":
        level, width = ct_window
        lo, hi = level - width / 2, level + width / 2
        keep_zero = None
    else:
        fg = a[a != 0]
        lo, hi = (np.percentile(fg, [0.5, 99.5]) if fg.size else (0.0, 1.0))
        keep_zero = a == 0
    scaled = (np.clip(a, lo, hi) - lo) / max(hi - lo, 1e-8) * 255.0
    if keep_zero is not None:
        scaled[keep_zero] = 0
    return np.rint(scaled).astype(np.uint8)


def to_challenge_axes(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume reoriented to LPS and laid out (z, y, x), with its spacing in (x, y, z)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(volume.affine), nib.orientations.axcodes2ornt(LPS))
    lps = nib.orientations.apply_orientation(volume.array, ornt)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return np.ascontiguousarray(lps.transpose(2, 1, 0)), spacing  # type: ignore[return-value]


def from_challenge_axes(array: np.ndarray, affine: np.ndarray | None, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_challenge_axes`: the array on the original grid of ``affine`` (the
    identity direction, LPS, at origin 0 when ``affine`` is None) and that affine."""
    xyz = np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0))
    lps_affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    if affine is None:
        return xyz, lps_affine
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(LPS), nib.orientations.io_orientation(affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(xyz, ornt)), affine


def relabel(label: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """``label`` with ``class_ids`` renumbered 1..N in the given order; every other voxel 0."""
    out = np.zeros(label.shape, dtype=np.uint8 if len(class_ids) < 256 else np.uint16)
    for new, old in enumerate(class_ids, start=1):
        out[label == old] = new
    return out


def challenge_boxes(gts: np.ndarray, rng: np.random.Generator | None = None) -> list[dict]:
    """The challenge's box prompt of every class 1..N of ``gts`` (see the module docstring)."""
    boxes = []
    for cls in range(1, int(gts.max(initial=0)) + 1):
        zs, ys, xs = np.nonzero(gts == cls)
        if zs.size == 0:
            raise InputError(f"class {cls} is empty: labels must be numbered 1..N without gaps")
        slices = np.unique(zs)
        z_mid = int(slices[len(slices) // 2])
        ym, xm = np.nonzero(gts[z_mid] == cls)
        height, width = gts.shape[1:]
        shift = int(rng.integers(0, 6)) if rng is not None else 0
        dx, dy = int(shift * width / 256), int(shift * height / 256)
        boxes.append({
            "z_min": int(zs.min()), "z_max": int(zs.max()), "z_mid": z_mid,
            "z_mid_x_min": max(0, int(xm.min()) - dx), "z_mid_y_min": max(0, int(ym.min()) - dy),
            "z_mid_x_max": min(width - 1, int(xm.max()) + dx), "z_mid_y_max": min(height - 1, int(ym.max()) + dy),
        })
    return boxes


def file_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a file name (box widening is reproducible per file)."""
    return np.random.default_rng([seed, *name.encode()])


def challenge_name(modality: str, dataset: str, case_id: str) -> str:
    """``<MOD>_<dataset without DatasetNNN_>_<case>`` (no second prefix if the case has one)."""
    short = re.sub(r"^Dataset\d{3}_", "", dataset)
    if modality_of(case_id) == modality:
        return case_id
    return f"{modality or 'UNKNOWN'}_{short}_{case_id}"


def read_geometry(folder: Path) -> dict:
    """The ``adapt3d_geometry.json`` of a converted folder ({} when absent)."""
    path = folder / GEOMETRY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


# -- datasets ----------------------------------------------------------------------------------
def case_to_challenge(image: Volume, label: Volume | None, modality: str, name: str, *, seed: int = 0,
                      ct_window: tuple[float, float] = (40.0, 400.0), class_ids: list[int] | None = None) -> tuple[ChallengeCase, dict]:
    """One nnU-Net case as a :class:`ChallengeCase` and its geometry record (affine, label-id map).

    ``class_ids`` (default: every id present) are renumbered 1..N in that order.
    """
    imgs, spacing = to_challenge_axes(image)
    case = ChallengeCase(name, to_uint8(imgs, modality, ct_window), spacing)
    record: dict = {"affine": np.asarray(image.affine).tolist(), "labels": {}}
    if label is not None:
        lab, _ = to_challenge_axes(label)
        ids = class_ids if class_ids is not None else [int(v) for v in np.unique(lab) if v > 0]
        case.gts = relabel(lab, ids)
        case.boxes = challenge_boxes(case.gts, file_rng(seed, name)) if ids else []
        record["labels"] = {str(new): old for new, old in enumerate(ids, start=1)}
    return case, record


def nnunet_to_npz(root: str | Path, out: Path, *, labels_apart: bool = False, seed: int = 0,
                  ct_window: tuple[float, float] = (40.0, 400.0)) -> list[Path]:
    """Write every case of an nnU-Net raw dataset into ``out`` (a new folder being built) as challenge
    npz; with ``labels_apart`` images go to ``out/imgs`` and labels to ``out/gts``."""
    from adapt3d.data.nnunet import load_case, read_dataset

    ds = read_dataset(root)
    img_dir = out / "imgs" if labels_apart else out
    img_dir.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict] = {}
    written = []
    for c in ds.cases:
        image, label = load_case(c)
        name = challenge_name(ds.modality, ds.name, c.case_id)
        case, record = case_to_challenge(image, label, ds.modality, name, seed=seed, ct_window=ct_window)
        written.append(write_challenge_npz(img_dir / f"{name}.npz", case, include_gts=not labels_apart))
        if labels_apart and case.gts is not None:
            (out / "gts").mkdir(exist_ok=True)
            write_gts_npz(out / "gts" / f"{name}.npz", case.gts)
        cases[name] = {"case": c.case_id, "split": c.split, **record}
    meta = {"format": 1, "source": str(ds.root), "dataset": ds.name, "modality": ds.modality,
            "channel_names": ds.info.get("channel_names"), "labels": ds.info.get("labels"),
            "seed": seed, "ct_window": list(ct_window), "cases": cases}
    (out / GEOMETRY_FILE).write_text(json.dumps(meta, indent=1))
    return written


def npz_to_nnunet(src: str | Path, out: Path, *, name: str | None = None) -> list[Path]:
    """Write the challenge npz files of ``src`` (``src/*.npz``, or ``src/imgs`` + ``src/gts``) into
    ``out`` (a new folder being built) as an nnU-Net v2 raw dataset; see the module docstring."""
    src = Path(src)
    img_dir = src / "imgs" if (src / "imgs").is_dir() else src
    gts_dir = src / "gts" if (src / "gts").is_dir() else None
    files = sorted(img_dir.glob("*.npz"))
    if not files:
        raise InputError(f"{img_dir}: no .npz files")
    geometry = read_geometry(src)
    known = geometry.get("cases", {})
    modalities = {modality_of(p.name) for p in files}
    if len(modalities) > 1:
        raise InputError(f"{src}: files of several modalities ({', '.join(sorted(modalities))}); convert one modality per dataset")
    modality = modalities.pop() or "unknown"
    n_labelled, n_classes = 0, 0
    for path in files:
        has_gts = gts_dir is not None and (gts_dir / path.name).is_file()
        case = load_challenge_case(path, gts_dir=gts_dir if has_gts else None)
        record = known.get(path.stem, {})
        case_id = record.get("case", path.stem)
        test = record.get("split") == "test"
        image, affine = from_challenge_axes(case.imgs, record.get("affine"), case.spacing)
        _save(out / ("imagesTs" if test else "imagesTr") / f"{case_id}_0000.nii.gz", image, affine)
        if case.gts is not None:
            ids = {int(k): int(v) for k, v in record.get("labels", {}).items()}
            lab = np.zeros(case.gts.shape, dtype=np.uint16)
            for new in (int(v) for v in np.unique(case.gts) if v > 0):
                lab[case.gts == new] = ids.get(new, new)
            lab_xyz, _ = from_challenge_axes(lab, record.get("affine"), case.spacing)
            _save(out / ("labelsTs" if test else "labelsTr") / f"{case_id}.nii.gz", lab_xyz, affine)
            n_labelled += not test
            n_classes = max(n_classes, int(case.gts.max(initial=0)))
    labels = geometry.get("labels") or {"background": 0, **{f"class_{i}": i for i in range(1, n_classes + 1)}}
    info = {"name": name or out.name, "channel_names": geometry.get("channel_names") or {"0": modality}, "labels": labels,
            "numTraining": n_labelled, "file_ending": ".nii.gz",
            "description": f"converted by adapt3d from the challenge npz in {src}" + (
                "" if geometry else " (no adapt3d_geometry.json: identity direction (LPS) at origin 0, challenge class ids)")}
    (out / "dataset.json").write_text(json.dumps(info, indent=1))
    return files


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
