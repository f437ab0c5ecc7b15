"""nnU-Net v2 raw datasets: read ``dataset.json``, pair image/label files, validate, expand labels.

Layout: ``dataset.json``, ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>``, optional
``imagesTs/`` and ``labelsTs/``. Images without a label are *unlabelled* cases (kept for
self-supervised adaptation). Every problem found is collected, so a user sees all of them at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from adapt3d.data.imageio import Volume, ending_of, is_data_file, load_volume, read_geometry, supported_endings
from adapt3d.errors import InputError

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
MODALITY_ALIASES = {"ct": "CT", "mr": "MR", "mri": "MR", "us": "US", "ultrasound": "US"}
SPACING_RTOL = 1e-4  # relative, on voxel sizes
DIRECTION_ATOL = 1e-4  # on unit direction cosines
ORIGIN_ATOL_MM = 1e-3
SPLITS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
IGNORE_NAME = "ignore"  # nnU-Net v2's label of voxels whose class is unknown (not a class)
_IMAGE_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One image, its label map (``None`` when unlabelled) and its split (``"train"``/``"test"``)."""

    case_id: str
    image_path: Path
    label_path: Path | None
    split: str


@dataclass
class Dataset:
    """A parsed nnU-Net v2 raw dataset; ``classes`` maps class name → label id (background excluded)."""

    name: str
    root: Path
    modality: str
    classes: dict[str, int]
    cases: list[Case]
    info: dict = field(default_factory=dict)  # dataset.json as read

    @property
    def ignore_label(self) -> int | None:
        """Id of the ``ignore`` label (unknown voxels, e.g. pseudo-label uncertainty), if declared."""
        value = (self.info.get("labels") or {}).get(IGNORE_NAME) if isinstance(self.info.get("labels"), dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def labelled(self) -> list[Case]:
        """Training cases with a label map."""
        return [c for c in self.cases if c.split == "train" and c.label_path is not None]

    @property
    def unlabelled(self) -> list[Case]:
        """Images without a label map, in ``imagesTr/`` or ``imagesTs/``: the self-supervised pool.

        Test images with a label are held out for evaluation and never part of it.
        """
        return [c for c in self.cases if c.label_path is None]

    @property
    def test(self) -> list[Case]:
        """Cases of ``imagesTs/``, labelled or not."""
        return [c for c in self.cases if c.split == "test"]


@dataclass
class CaseInfo:
    """Geometry of a case read from its header, and foreground voxel counts per label id."""

    case: Case
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    label_counts: dict[int, int] | None  # None: no label, or voxels not read


def normalise_modality(name: str) -> str:
    """``CT``; ``MR``/``MRI`` → ``MR``; ``US``/``ultrasound`` → ``US``; anything else unchanged."""
    return MODALITY_ALIASES.get(str(name).strip().lower(), str(name))


def _read_json(root: Path) -> tuple[dict, list[str]]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}, ["dataset.json: missing (every nnU-Net v2 raw dataset needs one)"]
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, [f"dataset.json: not valid JSON ({exc})"]
    if not isinstance(info, dict):
        return {}, [f"dataset.json: expected a JSON object, got {type(info).__name__}"]
    return info, [f"dataset.json: missing key {key!r}" for key in REQUIRED_KEYS if key not in info]


def _parse_modality(info: dict) -> tuple[str, list[str]]:
    channels = info.get("channel_names")
    if channels is None:
        return "unknown", []
    if not isinstance(channels, dict) or "0" not in channels:
        return "unknown", ['dataset.json: channel_names must be an object with key "0", e.g. {"0": "CT"}']
    if len(channels) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in channels.items())
        return "unknown", [f"dataset.json: {len(channels)} channels ({listed}); only single-channel (_0000) datasets are supported"]
    return normalise_modality(channels["0"]), []


def _parse_labels(info: dict) -> tuple[dict[str, int], list[str]]:
    labels = info.get("labels")
    if labels is None:
        return {}, []
    if not isinstance(labels, dict):
        return {}, ['dataset.json: labels must be an object mapping names to integer ids, e.g. {"background": 0}']
    classes: dict[str, int] = {}
    problems: list[str] = []
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            problems.append(f"dataset.json: label {name!r} is a region {value}; region-based labels are not supported, give each label one integer id")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"dataset.json: label {name!r} has id {value!r}; ids must be non-negative integers")
        elif value in seen:
            problems.append(f"dataset.json: labels {seen[value]!r} and {name!r} share id {value}")
        else:
            seen[value] = name
            if value and name != IGNORE_NAME:
                classes[name] = value
    if 0 not in seen and not problems:
        problems.append('dataset.json: labels must declare the background as 0, e.g. "background": 0')
    return classes, problems


def _parse_ending(info: dict) -> tuple[str | None, list[str]]:
    ending = info.get("file_ending", ".nii.gz")
    if ending not in supported_endings():
        return None, [f"dataset.json: file_ending {ending!r} is not supported (use {', '.join(supported_endings())})"]
    return ending, []


def _mixed_endings(folder: str, files: list[Path], ending: str) -> list[str]:
    """One line per folder for image files in another supported format than ``file_ending``."""
    others: dict[str, list[str]] = {}
    for path in files:
        other = ending_of(path)
        if other is not None and other != ending:
            others.setdefault(other, []).append(path.name)
    if not others:
        return []
    found = "; ".join(f"{len(names)} {e} (e.g. {names[0]})" for e, names in sorted(others.items()))
    return [f"{folder}/: mixed file endings: {found}, but dataset.json file_ending is {ending!r}; convert every file to one format"]


def _files(folder: Path, ending: str) -> list[Path]:
    """The visible files of ``folder``, without the data files of detached headers (``.mhd`` -> ``.zraw``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and not is_data_file(p, ending))


def _pair_split(root: Path, split: str, ending: str) -> tuple[list[Case], list[str]]:
    images_dir, labels_dir = SPLITS[split]
    images: dict[str, Path] = {}
    misnamed: dict[str, Path] = {}
    image_files, label_files = _files(root / images_dir, ending), _files(root / labels_dir, ending)
    problems = _mixed_endings(images_dir, image_files, ending) + _mixed_endings(labels_dir, label_files, ending)
    for path in image_files:
        rel = f"{images_dir}/{path.name}"
        if ending_of(path) not in (None, ending):
            continue  # reported once per folder
        if not path.name.endswith(ending):
            problems.append(f"{rel}: not a {ending!r} file (dataset.json file_ending)")
            continue
        match = _IMAGE_NAME.match(path.name[: -len(ending)])
        if match is None:
            misnamed[path.name[: -len(ending)]] = path
        elif match["channel"] != "0000":
            problems.append(f"{rel}: channel {match['channel']}; only single-channel (_0000) images are supported")
        else:
            images[match["case"]] = path
    labels: dict[str, Path] = {}
    for path in label_files:
        rel = f"{labels_dir}/{path.name}"
        case_id = path.name[: -len(ending)] if path.name.endswith(ending) else None
        if ending_of(path) not in (None, ending):
            continue  # reported once per folder
        if case_id is None:
            problems.append(f"{rel}: not a {ending!r} file (dataset.json file_ending)")
        elif case_id in images:
            labels[case_id] = path
        elif case_id in misnamed:
            bad = misnamed.pop(case_id).name
            problems.append(f"{images_dir}/{bad}: image of {rel} must be named {case_id}_0000{ending}")
        else:
            problems.append(f"{rel}: label without image (expected {images_dir}/{case_id}_0000{ending})")
    problems += [f"{images_dir}/{p.name}: image names must be <case>_0000{ending}" for p in misnamed.values()]
    cases = [Case(cid, path, labels.get(cid), split) for cid, path in sorted(images.items())]
    return cases, problems


def scan_dataset(root: str | Path) -> tuple[Dataset, list[str]]:
    """Parse ``dataset.json`` and pair the files (no volume is opened); return the dataset and problems."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    info, problems = _read_json(root)
    modality, more = _parse_modality(info)
    classes, label_problems = _parse_labels(info)
    ending, ending_problems = _parse_ending(info)
    problems += more + label_problems + ending_problems
    cases: list[Case] = []
    if ending is not None:
        for split in SPLITS:
            split_cases, pair_problems = _pair_split(root, split, ending)
            cases += split_cases
            problems += pair_problems
        if not cases:
            problems.append(f"imagesTr/, imagesTs/: no {ending} images found")
    train_ids = {c.case_id for c in cases if c.split == "train"}
    problems += [f"imagesTs/{c.image_path.name}: case id {c.case_id!r} is also in imagesTr" for c in cases if c.split == "test" and c.case_id in train_ids]
    ds = Dataset(name=root.name, root=root, modality=modality, classes=classes, cases=cases, info=info)
    expected = info.get("numTraining")
    if "numTraining" in info and (isinstance(expected, bool) or not isinstance(expected, int)):
        problems.append(f"dataset.json: numTraining must be an integer, got {expected!r}")
    elif ending is not None and expected is not None and expected not in (len(ds.labelled), len(train_ids)):
        problems.append(f"dataset.json: numTraining is {expected} but imagesTr has {len(train_ids)} cases ({len(ds.labelled)} labelled)")
    return ds, problems


def unlabelled_training_warning(ds: Dataset) -> str | None:
    """One warning line naming every ``imagesTr`` image without a label (None when there is none).

    Such images are valid (they stay unlabelled cases, the self-supervised pool), but a missing
    label is often a mistake, so ``ingest`` says which cases have none.
    """
    ids = [c.case_id for c in ds.cases if c.split == "train" and c.label_path is None]
    if not ids:
        return None
    n = len(ids)
    return (f"warning: {ds.root.name}: {n} imagesTr image{'s' if n != 1 else ''} without a label in labelsTr, "
            f"kept as unlabelled case{'s' if n != 1 else ''}: {', '.join(ids)}")


def raise_problems(root: str | Path, problems: list[str]) -> None:
    """Raise one :class:`InputError`: a summary line ``<root>: N problems found``, then one line each."""
    if problems:
        n = len(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        raise InputError(f"{root}: {n} problem{'s' if n != 1 else ''} found\n{lines}")


def read_dataset(root: str | Path) -> Dataset:
    """Read an nnU-Net v2 raw dataset: checks ``dataset.json`` and file pairing only (fast)."""
    ds, problems = scan_dataset(root)
    raise_problems(ds.root, problems)
    return ds


def _relative(message: str, path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel + message[len(str(path)) :] if message.startswith(str(path)) else f"{rel}: {message}"


def _header(path: Path, root: Path, problems: list[str]) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """Shape and affine from the header only; a problem is recorded and ``None`` returned if unusable."""
    try:
        return read_geometry(path)
    except InputError as exc:
        problems.append(_relative(str(exc), path, root))
        return None


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def affine_differences(a: np.ndarray, b: np.ndarray) -> list[str]:
    """Describe where affines ``a`` and ``b`` differ beyond the spacing/direction/origin tolerances."""
    sa, sb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    diffs = []
    if not np.allclose(sa, sb, rtol=SPACING_RTOL, atol=0.0):
        diffs.append(f"spacing {_fmt(sa)} vs {_fmt(sb)} mm")
    da, db = a[:3, :3] / np.where(sa > 0, sa, 1.0), b[:3, :3] / np.where(sb > 0, sb, 1.0)
    if np.max(np.abs(da - db)) > DIRECTION_ATOL:
        codes = ["".join(nib.orientations.aff2axcodes(m)) for m in (a, b)]
        diffs.append(f"direction {codes[0]} vs {codes[1]} (max cosine difference {np.max(np.abs(da - db)):.3g})")
    if np.max(np.abs(a[:3, 3] - b[:3, 3])) > ORIGIN_ATOL_MM:
        diffs.append(f"origin {_fmt(a[:3, 3])} vs {_fmt(b[:3, 3])} mm")
    return diffs


def _voxel_checks(case: Case, root: Path, declared: set[int] | None, problems: list[str]) -> dict[int, int] | None:
    """Load the image (finite values) and label (ids, foreground) once; return foreground counts."""
    try:
        load_volume(case.image_path, kind="image")
    except InputError as exc:
        problems.append(_relative(str(exc), case.image_path, root))
    if case.label_path is None:
        return None
    try:
        label = load_volume(case.label_path, kind="label")
    except InputError as exc:
        problems.append(_relative(str(exc), case.label_path, root))
        return None
    counts = {i: int(n) for i, n in enumerate(np.bincount(label.array.ravel())) if i and n}
    rel = case.label_path.relative_to(root).as_posix()
    undeclared = sorted(set(counts) - declared) if declared is not None else []
    if undeclared:
        problems.append(f"{rel}: label ids {undeclared} are not declared in dataset.json labels")
    if not counts:
        problems.append(f"{rel}: label map is empty (no foreground voxels)")
    return counts


def _inspect_case(case: Case, root: Path, declared: set[int] | None, check_voxels: bool) -> tuple[CaseInfo | None, list[str]]:
    problems: list[str] = []
    image = _header(case.image_path, root, problems)
    label = _header(case.label_path, root, problems) if case.label_path is not None else None
    if image is not None and label is not None:
        rel, img_name = case.label_path.relative_to(root).as_posix(), case.image_path.name  # type: ignore[union-attr]
        if label[0] != image[0]:
            problems.append(f"{rel}: shape {label[0]} differs from image {img_name} shape {image[0]}")
        diffs = affine_differences(label[1], image[1])
        if diffs:
            problems.append(f"{rel}: affine differs from image {img_name}: {'; '.join(diffs)}")
    if image is None or (case.label_path is not None and label is None):
        return None, problems
    counts = _voxel_checks(case, root, declared, problems) if check_voxels else None
    shape, affine = image
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    orientation = "".join(nib.orientations.aff2axcodes(affine))
    return CaseInfo(case, shape, spacing, orientation, counts), problems  # type: ignore[arg-type]


def inspect_dataset(ds: Dataset, *, check_voxels: bool = True) -> tuple[list[CaseInfo], list[str]]:
    """Read each case's headers (geometry checks), then, with ``check_voxels``, its data once.

    Returns the per-case geometry/label counts of the readable cases and every problem found.
    Label ids are checked against ``dataset.json`` only when its ``labels`` are valid.
    """
    classes, label_problems = _parse_labels(ds.info)
    ignore = {ds.ignore_label} if ds.ignore_label is not None else set()
    declared = None if label_problems or "labels" not in ds.info else {0, *classes.values(), *ignore}
    infos: list[CaseInfo] = []
    problems: list[str] = []
    for case in tqdm(ds.cases, desc=f"checking {ds.name}", unit="case", disable=None, leave=False):
        info, case_problems = _inspect_case(case, ds.root, declared, check_voxels)
        problems += case_problems
        if info is not None:
            infos.append(info)
    return infos, problems


def validate_dataset(ds: Dataset, *, check_voxels: bool = True) -> list[str]:
    """All problems of the dataset's volumes (geometry; with ``check_voxels`` also values and label ids)."""
    return inspect_dataset(ds, check_voxels=check_voxels)[1]


def check_dataset(root: str | Path, *, check_voxels: bool = True) -> tuple[Dataset, list[CaseInfo]]:
    """Read and fully validate a dataset; raise one :class:`InputError` listing every problem."""
    ds, problems = scan_dataset(root)
    infos, more = inspect_dataset(ds, check_voxels=check_voxels)
    raise_problems(ds.root, problems + more)
    return ds, infos


def load_case(case: Case) -> tuple[Volume, Volume | None]:
    """Load a case's image (float32) and label map (int), or ``None`` for an unlabelled case."""
    image = load_volume(case.image_path, kind="image")
    label = load_volume(case.label_path, kind="label") if case.label_path is not None else None
    return image, label


def binary_targets(
    label: Volume | np.ndarray, classes: dict[str, int], *, min_voxels: int = 10
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Expand a multi-class label map into one boolean mask per class.

    Classes absent from the map or with fewer than ``min_voxels`` voxels are skipped and returned
    in the second dict with the reason.
    """
    array = label.array if isinstance(label, Volume) else np.asarray(label)
    counts = np.bincount(array.ravel().astype(np.int64, copy=False)) if array.size else np.zeros(1, np.int64)
    targets: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for name, class_id in classes.items():
        n = int(counts[class_id]) if class_id < len(counts) else 0
        if n == 0:
            skipped[name] = "absent"
        elif n < min_voxels:
            skipped[name] = f"{n} voxels < min_voxels {min_voxels}"
        else:
            targets[name] = array == class_id
    return targets, skipped
