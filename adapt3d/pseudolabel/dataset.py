"""Pseudo-label a whole nnU-Net dataset: every labelled training case, written atomically.

A case whose label holds the dataset's unlabelled value (``"ignore"`` of its ``dataset.json``,
else 255) is a user's sparse annotation and is propagated as given. A fully labelled case is
reduced to its keyframes first (simulated sparse annotation), propagated, and scored against
the hidden slices (:mod:`~adapt3d.pseudolabel.qc`). Images without labels and test cases
are not copied. Everything is checked before the output folder appears; any failure leaves none.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adapt3d.atomic import atomic_dir
from adapt3d.data.nnunet import Dataset, load_case, read_dataset
from adapt3d.errors import ConfigError, InputError
from adapt3d.pseudolabel.backends import PSEUDOLABEL_BACKENDS
from adapt3d.pseudolabel.confidence import DEFAULT_BAND, check_band, make_pseudolabel
from adapt3d.pseudolabel.keyframes import IGNORE, auto_axis, check_spacing, label_dtype, sparse_from_ignore
from adapt3d.pseudolabel.qc import leave_keyframes_out, summarise_qc
from adapt3d.pseudolabel.writer import PseudolabelWriter


def source_labels(ds: Dataset) -> tuple[dict[str, int], int]:
    """The dataset's labels (background included, ``ignore`` excluded) and its unlabelled value."""
    labels = {k: int(v) for k, v in ds.info["labels"].items() if k != "ignore"}
    return labels, int(ds.info["labels"].get("ignore", IGNORE))


def resolve_ignore(ignore: int | None, labels: dict[str, int]) -> int:
    """The output ignore id: ``None`` means highest label id + 1 (nnU-Net v2's rule)."""
    top = max(labels.values())
    ignore = top + 1 if ignore is None else int(ignore)
    if ignore <= top:
        raise ConfigError(f"ignore id {ignore} must be above every label id (highest: {top})")
    label_dtype(ignore)
    return ignore


def pseudolabel_dataset(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backend: str,
    every: int | None = None,
    count: int | None = None,
    axis: int | None = None,
    band: tuple[float, float] = DEFAULT_BAND,
    ignore: int | None = IGNORE,
    overwrite: bool = False,
    **options,
) -> dict:
    """Write the pseudo-label dataset ``out`` from the nnU-Net dataset ``data``; return ``qc.json``'s content.

    Keyframes of fully labelled cases: ``every`` K-th slice or ``count`` N (exactly one; both may
    be None when every case is already sparse).

    ``axis`` None: :func:`~adapt3d.pseudolabel.keyframes.auto_axis` per case (for sparse
    cases, the axis of their labelled slices). ``ignore`` None: highest label id + 1.
    ``options`` go to the backend (e.g. ``core=`` or ``seggpt=``, see ``backend_options``).
    """
    ds = read_dataset(data)
    labels, unknown = source_labels(ds)
    classes = {k: v for k, v in labels.items() if v != 0}
    if not ds.labelled:
        raise InputError(f"{ds.root}: no labelled training case (labelsTr/) to pseudo-label")
    if every is not None or count is not None:
        check_spacing(every, count)
    band = check_band(band)
    ignore = resolve_ignore(ignore, labels)
    PSEUDOLABEL_BACKENDS.get(backend)
    if axis not in (None, 0, 1, 2):
        raise ConfigError(f"axis must be 0, 1, 2 or auto, got {axis}")
    settings = {
        "backend": backend,
        "keyframes": count,
        "every": every,
        "axis": "auto" if axis is None else axis,
        "uncertain": list(band),
        "ignore": ignore,
        "source": str(ds.root),
    }
    reports: dict[str, dict] = {}
    sparse_cases: list[str] = []
    declared = set(labels.values()) | {unknown}
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = PseudolabelWriter(tmp, out.name, ds, labels, ignore)
        for case in tqdm(ds.labelled, desc="pseudo-labelling", unit="case", disable=None):
            image, label = load_case(case)
            if label.shape != image.shape:
                raise InputError(f"{case.label_path}: shape {label.shape} differs from image shape {image.shape}")
            found = set(np.unique(label.array).tolist())
            if found - declared:
                raise InputError(f"{case.label_path}: label ids {sorted(found - declared)} are not declared in dataset.json labels")
            run = dict(backend=backend, band=band, ignore=ignore, **options)
            if unknown in found:
                sparse = sparse_from_ignore(label.array, axis=axis, ignore=unknown, where=str(case.label_path))
                pseudo = make_pseudolabel(image, sparse, classes, **run)
                sparse_cases.append(case.case_id)
            elif every is None and count is None:
                raise ConfigError(f"{case.label_path}: fully labelled; choose its keyframes with --keyframes N or --every K")
            else:
                ax = auto_axis(image.shape, image.spacing) if axis is None else axis
                pseudo, reports[case.case_id] = leave_keyframes_out(image, label.array, classes, axis=ax, every=every, count=count, **run)
            writer.add(case, pseudo, label)
        qc = {"cases": reports, "summary": summarise_qc(reports), "sparse_cases": sparse_cases}
        writer.finish(settings, qc)
    return {"settings": settings, **qc}
