"""Contrastive context head: overlap targets, EMA teacher, loss decrease, ignore-label masking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tiny import SAMPLE_DATA, TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.data.nnunet import read_dataset
from adapt3d.data.preprocess import Window
from adapt3d.train.context import ContextHead, base_windows, overlap_fractions, voco_loss
from adapt3d.train.losses import dice_ce_loss
from adapt3d.tuners import AdapterConfig, add_adapters


def test_overlap_targets_of_known_crops():
    bases = base_windows((0, 0, 0), 4)
    assert [b.start for b in bases] == [(0, 0, 0), (0, 4, 0), (4, 0, 0), (4, 4, 0)]
    assert overlap_fractions(Window((0, 0, 0), 4), bases).tolist() == [1, 0, 0, 0]
    assert overlap_fractions(Window((2, 0, 0), 4), bases).tolist() == [0.5, 0, 0.5, 0]
    assert overlap_fractions(Window((2, 2, 0), 4), bases).tolist() == [0.25] * 4
    assert overlap_fractions(Window((1, 3, 0), 4), bases).tolist() == [3 / 16, 9 / 16, 1 / 16, 3 / 16]


def test_voco_loss_is_zero_for_matching_similarities_and_penalises_mismatch():
    teacher = torch.eye(4)
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]])
    perfect, reg = voco_loss(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]), teacher, targets)
    assert perfect.item() == pytest.approx(0.0, abs=1e-5) and reg.item() == 0.0
    wrong, _ = voco_loss(torch.tensor([[0, 1.0, 0, 0], [0, 0, 1, 0]]), teacher, targets)
    assert wrong.item() > 1.0
    _, reg_same = voco_loss(torch.ones(1, 4), torch.ones(4, 4), torch.ones(1, 4) / 4)
    assert reg_same.item() == pytest.approx(1.0)


class _Step:
    """What the head needs from the training module: the model and a step counter."""

    def __init__(self, model):
        self.model = model
        self.global_step = 0


def _head(model, **kw):
    ds = read_dataset(SAMPLE_DATA / "Dataset003_SpinalCordMR")
    return ContextHead(
        [c for c in ds.cases], "MR", feature_dim=24, size=32, target_spacing=(1.5, 1.5, 1.5),
        normalization="sam-med3d", projection_dim=16, **kw,
    )


def test_ema_update_rule():
    model = add_adapters(randomise(load_core("sam-med3d", **TINY_SAM), seed=1), AdapterConfig(rank=4), verbose=False)
    head = _head(model, momentum=0.9)
    step = _Step(model)
    head.update_teacher(step)  # first call: teacher = student
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: head.ema[n].clone() for n in params}
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    head.update_teacher(step)
    for n, p in params.items():
        assert torch.allclose(head.ema[n], 0.9 * before[n] + 0.1 * p.detach(), atol=1e-6)
    with head.teacher_weights(step):
        assert all(torch.equal(p, head.ema[n]) for n, p in params.items())
    assert not any(torch.equal(p, head.ema[n]) for n, p in params.items()), "student weights are restored"


def test_context_loss_decreases_when_training_adapters_and_head():
    torch.manual_seed(0)
    model = add_adapters(randomise(load_core("sam-med3d", **TINY_SAM), seed=2), AdapterConfig(rank=4), verbose=False)
    head = _head(model, momentum=0.0)  # teacher follows the student: a fixed problem to fit
    step = _Step(model)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.proj.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = {"image": torch.zeros(1)}
    losses = []
    for _ in range(30):
        loss, _ = head(step, batch)  # same step counter: the same crops every time
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.update_teacher(step)
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_ignored_voxels_get_no_gradient():
    logits = torch.randn(1, 1, 6, 6, 6, requires_grad=True)
    target = (torch.rand(1, 1, 6, 6, 6) > 0.5).float()
    known = torch.ones_like(target)
    known[..., :3] = 0
    dice_ce_loss(logits, target, known).backward()
    assert logits.grad[..., :3].abs().max() == 0 and logits.grad[..., 3:].abs().max() > 0
    flipped = target.clone()
    flipped[..., :3] = 1 - flipped[..., :3]  # changing labels where unknown changes nothing
    assert dice_ce_loss(logits, flipped, known).item() == pytest.approx(dice_ce_loss(logits, target, known).item())


def test_adaptation_with_context_head_and_pretraining_stage(tmp_path):
    from adapt3d.cores import save_core
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    core = save_core(randomise(load_core("sam-med3d", **TINY_SAM), seed=3), tmp_path / "core.pth")
    cfg = {
        "name": "ctx", "output_dir": str(tmp_path / "runs"), "core": {"checkpoint": str(core)},
        "adapter": {"rank": 4},
        "data": {"target": {"path": str(SAMPLE_DATA / "Dataset003_SpinalCordMR"), "test": {"cases": ["sct_t2w"]}}},
        "train": {"epochs": 1, "samples_per_item": 2, "click_rounds": 1, "accelerator": "cpu"},
        "eval": {"clicks": [1], "val_clicks": [1]},
        "context_head": {"enabled": True, "pretrain_epochs": 1, "random_crops": 2, "projection_dim": 16},
    }
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    run = run_adaptation(load_experiment(tmp_path / "e.yaml"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["context_head"] is True
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("extra_loss.proj") for k in ckpt["state_dict"])
    assert "extra_loss._extra_state" in ckpt["state_dict"] and ckpt["state_dict"]["extra_loss._extra_state"]["ema"]
    assert (run / "logs" / "context" / "metrics.csv").exists()
