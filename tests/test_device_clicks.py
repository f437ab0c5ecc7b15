"""The on-device training clicks agree with the numpy reference simulators on the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt3d.prompts import device_clicks
from adapt3d.prompts.clicks import next_click, random_clicks
from adapt3d.prompts.device_clicks import TrainingClicks, random_clicks_batched


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_single_error_voxel_gives_the_numpy_click():
    gt = np.zeros((2, 6, 7, 8), bool)
    gt[:, 1:4, 2:5, 3:6] = True
    pred = gt.copy()
    pred[0, 2, 3, 4] = False  # one false negative
    pred[1, 5, 6, 7] = True  # one false positive
    points, labels = random_clicks_batched(torch.from_numpy(pred), torch.from_numpy(gt), torch.ones_like(torch.from_numpy(gt)), _gen(0))
    for i in range(2):
        ref = random_clicks(pred[i], gt[i], rng=np.random.default_rng(0))
        assert tuple(points[i].long().tolist()) == ref.position
        assert labels[i].item() == ref.label


def test_exact_prediction_and_empty_object_give_no_click():
    gt = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    gt[0, 1:3, 1:3, 1:3] = True
    points, labels = random_clicks_batched(gt.clone(), gt, torch.ones_like(gt), _gen(0))
    assert labels.tolist() == [-1, -1]
    assert random_clicks(gt[0].numpy(), gt[0].numpy(), rng=np.random.default_rng(0)) is None


def test_first_click_is_uniform_over_the_object_like_the_reference():
    """Same support and (statistically) the same uniform distribution as the numpy first click."""
    gt = np.zeros((5, 5, 5), bool)
    gt[1, 1, 1:5] = True
    gt[3, 2, 2] = True  # five object voxels
    support = {tuple(p) for p in np.argwhere(gt)}
    batch = torch.from_numpy(np.repeat(gt[None], 4000, axis=0))
    points, labels = random_clicks_batched(None, batch, torch.ones_like(batch), _gen(3))
    assert bool((labels == 1).all())
    ours = [tuple(p) for p in points.long().tolist()]
    rng = np.random.default_rng(3)
    ref = [random_clicks(None, gt, rng=rng).position for _ in range(4000)]
    for draws in (ours, ref):
        assert set(draws) == support
        counts = np.array([draws.count(p) for p in sorted(support)])
        chi2 = (((counts - 800) ** 2) / 800).sum()
        assert chi2 < 18.5, counts  # χ²(4 dof) p = 0.001


def test_clicks_stay_inside_the_known_voxels():
    gt = torch.zeros(64, 8, 8, 8, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    pred[:, :, :, :4] = True  # false positives everywhere on the left half
    valid = torch.zeros_like(gt)
    valid[:, 2:4, 2:4, 1:3] = True
    points, labels = random_clicks_batched(pred, gt, valid, _gen(1))
    # no object anywhere: no corrective click either (the reference skips crops without an object)
    assert labels.tolist() == [-1] * 64
    gt[:, 0, 0, 7] = True
    points, labels = random_clicks_batched(pred, gt, valid, _gen(1))
    assert bool((labels == 0).all())
    p = points.long()
    assert bool(valid[torch.arange(64), p[:, 0], p[:, 1], p[:, 2]].all())


@pytest.mark.parametrize("on_device", [True, False])
def test_training_clicks_rounds_on_device_and_on_the_host(on_device, monkeypatch):
    """Both paths of TrainingClicks give the same rounds on a deterministic case."""
    monkeypatch.setattr(device_clicks, "HOST_DEVICE_TYPES", set() if on_device else {"cpu"})
    gt = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    gt[0, 2:5, 2:5, 2:5] = True  # crop 1 has no object
    valid = torch.ones_like(gt)
    clicks = TrainingClicks("random", gt, valid, np.random.default_rng(0))
    assert (clicks.batched is not None) == on_device
    points, labels = clicks.step(None)
    assert points.shape == (2, 1, 3) and labels.tolist() == [[1], [0]]  # one negative prompt for crop 1
    assert bool(gt[0][tuple(points[0, 0].long().tolist())])
    pred = gt.clone()
    pred[0, 2, 2, 2] = False
    points, labels = clicks.step(pred)
    assert labels.tolist() == [[1, 1], [0, -1]]
    assert points[0, 1].long().tolist() == [2, 2, 2]


def test_center_simulator_falls_back_to_the_numpy_reference():
    gt = torch.zeros(1, 9, 9, 9, dtype=torch.bool)
    gt[0, 1:8, 2:7, 3:6] = True
    clicks = TrainingClicks("center", gt, torch.ones_like(gt), np.random.default_rng(0))
    points, labels = clicks.step(None)
    ref = next_click(np.zeros((9, 9, 9), bool), gt[0].numpy(), rng=np.random.default_rng(0))  # same rng state
    assert tuple(points[0, 0].long().tolist()) == ref.position and labels.tolist() == [[1]]
