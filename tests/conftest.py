"""Shared pytest fixtures: the real sample data and tiny synthetic nnU-Net v2 raw datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: The embedded real sample (nnU-Net v2 raw datasets, attribution in datasets/sample/ATTRIBUTION.md).
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "datasets" / "sample"

#: Geometry of the synthetic dataset: 8x9x10 voxels of 1 x 1.5 x 2 mm, origin (-4, 5, 10) mm.
TINY_SHAPE = (8, 9, 10)
TINY_AFFINE = np.array([[1.0, 0, 0, -4.0], [0, 1.5, 0, 5.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), TINY_AFFINE if affine is None else affine), str(path))
    return path


@pytest.fixture
def sample_data() -> Path:
    """``datasets/sample`` of this repository: the real nnU-Net datasets embedded for demo and tests."""
    assert SAMPLE_DATA.is_dir(), f"{SAMPLE_DATA} is part of the repository and must be there"
    return SAMPLE_DATA


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=TINY_AFFINE)``: save a NIfTI file, creating folders."""
    return _write_nifti


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """A valid nnU-Net v2 raw dataset ``Dataset900_Tiny`` (MRI) in ``tmp_path``.

    Classes liver=1, tumour=2; shape 8x9x10, TINY_AFFINE. imagesTr: case_a (liver 27 voxels,
    tumour 8 voxels), case_b (liver 64 voxels), case_c (no label → unlabelled);
    imagesTs: case_t (no label). dataset.json has ``"license": "CC-BY-4.0"``.
    """
    root = tmp_path / "Dataset900_Tiny"
    rng = np.random.default_rng(0)
    for split, case in (("Tr", "case_a"), ("Tr", "case_b"), ("Tr", "case_c"), ("Ts", "case_t")):
        _write_nifti(root / f"images{split}" / f"{case}_0000.nii.gz", rng.normal(size=TINY_SHAPE).astype(np.float32))
    label_a = np.zeros(TINY_SHAPE, np.uint8)
    label_a[1:4, 1:4, 1:4] = 1
    label_a[5:7, 5:7, 5:7] = 2
    label_b = np.zeros(TINY_SHAPE, np.uint8)
    label_b[2:6, 2:6, 2:6] = 1
    _write_nifti(root / "labelsTr" / "case_a.nii.gz", label_a)
    _write_nifti(root / "labelsTr" / "case_b.nii.gz", label_b)
    info = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
        "license": "CC-BY-4.0",
    }
    (root / "dataset.json").write_text(json.dumps(info, indent=1))
    return root
