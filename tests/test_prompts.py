"""Click and box prompt simulation: hand-placed objects whose correct click/box is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt3d import load_core
from adapt3d.errors import ConfigError
from adapt3d.prompts import (
    CLICK_SIMULATORS,
    Click,
    box_from_mask,
    clicks_to_tensors,
    first_click,
    next_click,
    random_error_click,
)
from tiny import TINY_SAM


def vol(shape=(20, 20, 20), *boxes) -> np.ndarray:
    """A boolean volume with the given boxes (tuples of slices) set."""
    out = np.zeros(shape, dtype=bool)
    for box in boxes:
        out[box] = True
    return out


# --- first click -------------------------------------------------------------------------------


def test_first_click_is_centre_of_odd_cube():
    gt = vol((20, 20, 20), np.s_[3:10, 5:12, 8:15])
    assert first_click(gt) == Click((6, 8, 11), True)


def test_first_click_is_centre_of_elongated_box_not_plateau_corner():
    # a 5x7x9 box: every voxel with depth 3 ties (a 1x3x5 plateau); the centre is chosen
    gt = vol((12, 14, 16), np.s_[2:7, 3:10, 4:13])
    assert first_click(gt).position == (4, 6, 8)


def test_first_click_volume_border_counts_as_boundary():
    gt = vol((20, 20, 20), np.s_[0:5, 0:5, 0:5])
    assert first_click(gt).position == (2, 2, 2)


def test_first_click_uses_anisotropic_spacing():
    # A: 3x11x11 slab, B: 7x7x7 cube, joined by a 3-voxel bridge. In voxels B's centre is deeper
    # (4 vs 2); with 3 mm along axis 0, A's centre is 6 mm deep and B's only 4 mm.
    gt = vol((12, 26, 16), np.s_[2:5, 2:13, 2:13], np.s_[2:9, 16:23, 3:10], np.s_[3, 13:16, 6])
    assert first_click(gt).position == (5, 19, 6)
    assert first_click(gt, spacing=(3.0, 1.0, 1.0)).position == (3, 7, 7)


def test_first_click_largest_component_wins_over_deeper_one():
    # an 800-voxel slab (depth 1) and a 343-voxel cube (depth 4): the slab is clicked
    gt = vol((30, 30, 30), np.s_[1:3, 2:22, 2:22], np.s_[10:17, 10:17, 10:17])
    click = first_click(gt)
    assert click.positive and click.position[0] in (1, 2) and gt[click.position]


def test_first_click_ties_lowest_index_or_seeded_draw():
    gt = vol((12, 12, 12), np.s_[2:6, 2:6, 2:6])  # 4-cube: 8 central voxels tie
    assert first_click(gt).position == (3, 3, 3)
    draws = {first_click(gt, rng=np.random.default_rng(s)).position for s in range(30)}
    assert draws <= {(i, j, k) for i in (3, 4) for j in (3, 4) for k in (3, 4)}
    assert len(draws) > 1
    assert [first_click(gt, rng=np.random.default_rng(7)) for _ in range(2)] == [
        first_click(gt, rng=np.random.default_rng(7))
    ] * 2


def test_first_click_rejects_empty_and_non_binary():
    with pytest.raises(ValueError, match="empty"):
        first_click(np.zeros((4, 4, 4), bool))
    with pytest.raises(ValueError, match="binary"):
        first_click(np.full((4, 4, 4), 2))
    with pytest.raises(ValueError, match="3D"):
        first_click(np.ones((4, 4), bool))


def test_first_click_accepts_torch_and_int_masks():
    gt = vol((20, 20, 20), np.s_[3:10, 5:12, 8:15])
    assert first_click(torch.from_numpy(gt)) == first_click(gt.astype(np.uint8)) == Click((6, 8, 11), True)


# --- next click --------------------------------------------------------------------------------


def test_next_click_positive_inside_missing_block():
    gt = vol((20, 20, 20), np.s_[2:12, 2:12, 2:12])
    pred = gt.copy()
    pred[2:7, 2:7, 2:7] = False
    assert next_click(pred, gt) == Click((4, 4, 4), True)


def test_next_click_negative_inside_false_positive_blob():
    gt = vol((20, 20, 20), np.s_[2:8, 2:8, 2:8])
    pred = vol((20, 20, 20), np.s_[2:8, 2:8, 2:8], np.s_[13:16, 13:16, 13:16])
    assert next_click(pred, gt) == Click((14, 14, 14), False)


def test_next_click_largest_error_region_wins():
    gt = vol((30, 30, 30), np.s_[2:12, 2:12, 2:12])
    missing = np.s_[2:5, 2:5, 2:5]  # 27 FN voxels
    pred = gt.copy()
    pred[missing] = False
    pred[20:24, 20:24, 20:24] = True  # 64 FP voxels
    assert next_click(pred, gt) == Click((21, 21, 21), False)
    pred[20:24, 20:24, 20:24] = False
    pred[20:22, 20:22, 20:22] = True  # now 8 FP voxels: the FN block wins
    assert next_click(pred, gt) == Click((3, 3, 3), True)


def test_next_click_picks_largest_of_several_false_negative_regions():
    gt = vol((30, 30, 30), np.s_[2:5, 2:5, 2:5], np.s_[10:15, 10:15, 10:15], np.s_[20:24, 2:6, 2:6])
    assert next_click(np.zeros_like(gt), gt) == Click((12, 12, 12), True)


def test_next_click_uses_face_connectivity():
    # two 27-voxel FN cubes touching only along an edge are two regions (6-connectivity), so the
    # 48-voxel FP blob is the largest error region; with 26-connectivity the FN pair (54) would win
    gt = vol((30, 30, 30), np.s_[2:5, 2:5, 2:5], np.s_[5:8, 5:8, 2:5])
    pred = vol((30, 30, 30), np.s_[20:24, 20:24, 20:23])
    assert next_click(pred, gt).positive is False


def test_next_click_equal_sizes_prefers_false_negative():
    gt = vol((20, 20, 20), np.s_[2:5, 2:5, 2:5])
    pred = vol((20, 20, 20), np.s_[12:15, 12:15, 12:15])
    assert next_click(pred, gt) == Click((3, 3, 3), True)


def test_next_click_none_when_exact_and_shape_checked():
    gt = vol((10, 10, 10), np.s_[2:5, 2:5, 2:5])
    assert next_click(gt.copy(), gt) is None
    with pytest.raises(ValueError, match="shape"):
        next_click(np.zeros((10, 10, 9), bool), gt)


# --- random clicks and simulators --------------------------------------------------------------


def test_random_error_click_lands_on_error_with_right_polarity_and_reproduces():
    gt = vol((16, 16, 16), np.s_[2:10, 2:10, 2:10])
    pred = vol((16, 16, 16), np.s_[4:12, 2:10, 2:10])
    clicks = [random_error_click(pred, gt, np.random.default_rng(s)) for s in range(60)]
    for c in clicks:
        assert pred[c.position] != gt[c.position]
        assert c.positive == bool(gt[c.position])
    assert {c.positive for c in clicks} == {True, False}
    assert clicks[:5] == [random_error_click(pred, gt, np.random.default_rng(s)) for s in range(5)]
    assert random_error_click(gt, gt, np.random.default_rng(0)) is None


def test_simulators_registry():
    assert CLICK_SIMULATORS.names() == ["center", "random"]
    with pytest.raises(ConfigError, match="center"):
        CLICK_SIMULATORS.get("centre")


def test_center_simulator_follows_first_then_next_click():
    sim = CLICK_SIMULATORS.get("center")
    gt = vol((20, 20, 20), np.s_[2:12, 2:12, 2:12])
    pred = gt.copy()
    pred[2:7, 2:7, 2:7] = False
    assert sim(None, gt) == first_click(gt) == Click((6, 6, 6), True)
    assert sim(pred, gt, None, (1.0, 1.0, 1.0)) == next_click(pred, gt)
    assert sim(None, np.zeros_like(gt)) is None


def test_random_simulator_first_click_in_object_and_seeded_sequence():
    sim = CLICK_SIMULATORS.get("random")
    gt = vol((16, 16, 16), np.s_[3:9, 4:10, 5:11])
    pred = vol((16, 16, 16), np.s_[3:9, 4:10, 8:14])

    def run(seed: int) -> list[Click]:
        rng = np.random.default_rng(seed)
        return [sim(None, gt, rng), sim(pred, gt, rng), sim(pred, gt, rng)]

    first, *later = run(3)
    assert first.positive and gt[first.position]
    assert all(pred[c.position] != gt[c.position] for c in later)
    assert run(3) == run(3)
    assert len({tuple(run(s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="rng"):
        sim(None, gt)


# --- tensors -----------------------------------------------------------------------------------


def test_clicks_to_tensors_pads_ragged_batches():
    points, labels = clicks_to_tensors([[Click((1, 2, 3), True), Click((4, 5, 6), False)], [Click((7, 8, 9), True)]])
    assert points.dtype == torch.float32 and labels.dtype == torch.int64
    assert points.tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [0, 0, 0]]]
    assert labels.tolist() == [[1, 0], [1, -1]]


def test_clicks_feed_sam_med3d_decode():
    core = load_core("sam-med3d", **TINY_SAM).eval()
    gt = vol((32, 32, 32), np.s_[8:20, 10:22, 12:24])
    points, labels = clicks_to_tensors([[first_click(gt)], [first_click(gt), Click((1, 1, 1), False)]])
    with torch.no_grad():
        emb = core.encode(torch.zeros(2, 1, 32, 32, 32))
        r = core.low_res_size
        low, iou = core.decode(emb, points, labels, torch.zeros(2, 1, r, r, r))
    assert low.shape == (2, 1, r, r, r) and iou.shape == (2, 1)


# --- boxes -------------------------------------------------------------------------------------


def test_box_without_jitter_is_exact():
    gt = vol((20, 20, 20), np.s_[2:5, 3:7, 4:9])
    gt[3, 5, 12] = True
    assert box_from_mask(gt) == ((2, 3, 4), (5, 7, 13))


def test_box_jitter_stays_inside_volume_is_bounded_and_seeded():
    gt = vol((20, 20, 20), np.s_[0:10, 5:15, 12:20])  # touches two borders
    sides = np.array([10, 10, 8])
    for seed in range(40):
        lo, hi = box_from_mask(gt, jitter=0.3, rng=np.random.default_rng(seed))
        lo, hi = np.array(lo), np.array(hi)
        assert (lo >= 0).all() and (hi <= 20).all() and (lo < hi).all()
        assert (np.abs(lo - [0, 5, 12]) <= np.rint(0.3 * sides)).all()
        assert (np.abs(hi - [10, 15, 20]) <= np.rint(0.3 * sides)).all()
    boxes = {box_from_mask(gt, 0.3, np.random.default_rng(s)) for s in range(10)}
    assert len(boxes) > 1
    assert box_from_mask(gt, 0.3, np.random.default_rng(4)) == box_from_mask(gt, 0.3, np.random.default_rng(4))
    with pytest.raises(ValueError, match="rng"):
        box_from_mask(gt, jitter=0.1)


def test_box_clipped_to_given_shape_and_empty_rejected():
    gt = vol((20, 20, 20), np.s_[2:5, 3:7, 4:16])
    assert box_from_mask(gt, shape=(20, 20, 10)) == ((2, 3, 4), (5, 7, 10))
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(np.zeros((5, 5, 5), bool))
