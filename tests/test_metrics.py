"""Dice, NSD and summaries against values computed by hand on small arrays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from adapt3d.evaluate import dice, nsd, summarise


def cube_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 4-voxel cube and the same cube shifted by one voxel along axis 0.

    Each has 56 boundary voxels (64 minus the 2x2x2 core). A boundary voxel of A is also one of B
    in the three shared layers' rings (3 x 12 = 36); the other 20 (A's first layer, 16, and A's
    core-adjacent 2x2 patch in its last layer, 4) lie 1 voxel from B's boundary — the layer
    along axis 0, the patch along axes 1/2. Symmetrically for B. So at tolerance 0:
    NSD = (36 + 36) / 112 = 9/14, and at tolerance >= one voxel it is 1.
    """
    a = np.zeros((9, 8, 8), dtype=bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True
    b[3:7, 2:6, 2:6] = True
    return a, b


def test_dice_half_overlap_is_one_half():
    a = np.zeros((4, 4, 4), dtype=bool)
    b = np.zeros_like(a)
    a[0:2, 0:2, 0:2] = True
    b[1:3, 0:2, 0:2] = True
    assert dice(a, b) == 0.5


def test_dice_values_and_input_types():
    a = np.zeros((5, 5, 5), dtype=np.uint8)
    a[0, 0, 0:3] = 1  # 3 voxels
    b = np.zeros_like(a)
    b[0, 0, 2:4] = 1  # 2 voxels, 1 shared
    assert dice(a, b) == pytest.approx(2 * 1 / 5, abs=0)
    assert dice(torch.from_numpy(a).bool(), torch.from_numpy(a)) == 1.0
    with pytest.raises(ValueError, match="binary"):
        dice(a * 3, b)
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:4])


def test_dice_empty_cases():
    empty = np.zeros((3, 3, 3), dtype=bool)
    full = np.ones((3, 3, 3), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(full, empty) == 0.0
    assert dice(empty, full) == 0.0


def test_nsd_shifted_cube_isotropic():
    a, b = cube_pair()
    assert nsd(a, b, (1.0, 1.0, 1.0), 0.0) == pytest.approx(9 / 14, abs=1e-12)
    assert nsd(a, b, (1.0, 1.0, 1.0), 0.99) == pytest.approx(9 / 14, abs=1e-12)
    assert nsd(a, b, (1.0, 1.0, 1.0), 1.0) == 1.0
    assert nsd(a, a, (1.0, 1.0, 1.0), 0.0) == 1.0


def test_nsd_shifted_cube_anisotropic():
    # with 2 mm along the shift axis, the 16-voxel layers are 2 mm away but the 4-voxel patches
    # are 1 mm away (along axes 1/2): at 1 mm, (36 + 4) * 2 / 112 = 5/7; at 2 mm, all.
    a, b = cube_pair()
    sp = (2.0, 1.0, 1.0)
    assert nsd(a, b, sp, 0.5) == pytest.approx(9 / 14, abs=1e-12)
    assert nsd(a, b, sp, 1.0) == pytest.approx(5 / 7, abs=1e-12)
    assert nsd(a, b, sp, 1.99) == pytest.approx(5 / 7, abs=1e-12)
    assert nsd(a, b, sp, 2.0) == 1.0
    # sub-millimetre voxels: one voxel is 0.5 mm
    assert nsd(a, b, (0.5, 0.5, 0.5), 0.5) == 1.0
    assert nsd(a, b, (0.5, 0.5, 0.5), 0.49) == pytest.approx(9 / 14, abs=1e-12)


def test_nsd_volume_border_counts_as_outside():
    # gt fills the 4x4x4 volume (56 boundary voxels); pred is its first 3 layers (44 boundary
    # voxels: 48 minus the 4 core voxels of layer 1). 40 boundary voxels are shared; pred's 4
    # core voxels of layer 2 and gt's 16 voxels of layer 3 are 1 voxel off: 80/100 at 0 mm.
    gt = np.ones((4, 4, 4), dtype=bool)
    pred = gt.copy()
    pred[3] = False
    assert nsd(pred, gt, (1.0, 1.0, 1.0), 0.0) == pytest.approx(0.8, abs=1e-12)
    assert nsd(pred, gt, (1.0, 1.0, 1.0), 1.0) == 1.0


def test_nsd_empty_cases_and_bad_arguments():
    empty = np.zeros((5, 5, 5), dtype=bool)
    blob = empty.copy()
    blob[1:3, 1:3, 1:3] = True
    assert nsd(empty, empty, (1, 1, 1), 1.0) == 1.0
    assert nsd(blob, empty, (1, 1, 1), 100.0) == 0.0
    assert nsd(empty, blob, (1, 1, 1), 100.0) == 0.0
    with pytest.raises(ValueError, match="tolerance"):
        nsd(blob, blob, (1, 1, 1), -1.0)
    with pytest.raises(ValueError, match="spacing"):
        nsd(blob, blob, (1, 1), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        nsd(blob, blob, (1, 0, 1), 1.0)


def test_nsd_matches_monai_boundary_voxel_definition():
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(1)
    for _ in range(6):
        p = ndimage.binary_opening(rng.random((10, 11, 12)) < 0.55)
        g = ndimage.binary_opening(rng.random((10, 11, 12)) < 0.55)
        assert p.any() and g.any()
        sp = tuple(rng.uniform(0.5, 3.0, 3))
        tol = float(rng.uniform(0.0, 4.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's own internal deprecation warning
            ref = compute_surface_dice(
                torch.from_numpy(p)[None, None], torch.from_numpy(g)[None, None], [tol],
                include_background=True, spacing=list(sp),
            )
        assert nsd(p, g, sp, tol) == pytest.approx(float(ref[0, 0]), abs=1e-6)


def test_summarise():
    s = summarise([1.0, 2.0, 3.0, math.nan])
    assert s == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert summarise([0.25]) == {"mean": 0.25, "sd": 0.0, "n": 1}
    assert summarise([2.0, 4.0]) == {"mean": 3.0, "sd": pytest.approx(math.sqrt(2.0), abs=1e-15), "n": 2}
    empty = summarise([math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["sd"])
    assert summarise([])["n"] == 0
