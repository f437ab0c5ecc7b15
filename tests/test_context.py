"""Contrastive context head: overlap targets, losses and their gradients, EMA teacher, crop side
from the field of view, the two-stage schedule, the unlabelled pool, ignore-label masking."""

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
from adapt3d.train.context import (
    ContextHead, auto_crop_mm, base_regulariser, base_windows, fov_box, overlap_fractions, prediction_loss,
)
from adapt3d.train.losses import dice_ce_loss
from adapt3d.tuners import AdapterConfig, add_adapters


def test_overlap_targets_of_known_crops():
    bases = base_windows((0, 0, 0), 4)
    assert [b.start for b in bases] == [(0, 0, 0), (0, 4, 0), (4, 0, 0), (4, 4, 0)]
    assert overlap_fractions(Window((0, 0, 0), 4), bases).tolist() == [1, 0, 0, 0]
    assert overlap_fractions(Window((2, 0, 0), 4), bases).tolist() == [0.5, 0, 0.5, 0]
    assert overlap_fractions(Window((2, 2, 0), 4), bases).tolist() == [0.25] * 4
    assert overlap_fractions(Window((1, 3, 0), 4), bases).tolist() == [3 / 16, 9 / 16, 1 / 16, 3 / 16]


def test_prediction_loss_is_zero_for_matching_similarities_and_penalises_mismatch():
    teacher = torch.eye(4)
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]])
    assert prediction_loss(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]), teacher, targets).item() == pytest.approx(0.0, abs=1e-5)
    assert prediction_loss(torch.tensor([[0, 1.0, 0, 0], [0, 0, 1, 0]]), teacher, targets).item() > 1.0


def test_base_regulariser_counts_only_positive_similarity_squared():
    assert base_regulariser(torch.eye(4)).item() == 0.0
    assert base_regulariser(torch.ones(4, 3)).item() == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert base_regulariser(opposite).item() == 0.0  # anti-aligned features are already apart
    half = torch.tensor([[1.0, 0.0], [0.5, 0.75**0.5]])  # cos 60° = 0.5
    assert base_regulariser(half).item() == pytest.approx(0.25)


def test_field_of_view_box_and_crop_side():
    a = np.zeros((10, 12, 14))
    a[2:5, 3:9, 1:14] = 1.0
    lo, hi = fov_box(a)
    assert lo.tolist() == [2, 3, 1] and hi.tolist() == [5, 9, 14]
    # grid 2 x 2 x 1: each axis' extent per grid cell, the smallest of all volumes, at most the native view
    assert auto_crop_mm([(42.5, 47.5, 50.0)], 192.0) == 21.25
    assert auto_crop_mm([(400.0, 300.0, 60.0), (100.0, 500.0, 500.0)], 192.0) == 50.0
    assert auto_crop_mm([(900.0, 900.0, 900.0)], 192.0) == 192.0


class _Step:
    """What the head needs from the training module: the model, a step counter, the stage."""

    def __init__(self, model, seg_enabled=False):
        self.model = model
        self.global_step = 0
        self.seg_enabled = seg_enabled


def _head(model, **kw):
    ds = read_dataset(SAMPLE_DATA / "Dataset003_SpinalCordMR")
    return ContextHead(
        [c for c in ds.cases], "MR", feature_dim=24, size=32, crop_mm=21.0,
        normalization="sam-med3d", projection_dim=16, **kw,
    )


def _adapted(seed):
    return add_adapters(randomise(load_core("sam-med3d", **TINY_SAM), seed=seed), AdapterConfig(rank=4), verbose=False)


def test_ema_update_rule():
    model = _adapted(1)
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


def _step_with(term: str):
    """One SGD step on one term of the context loss; what moved and what the teacher holds."""
    torch.manual_seed(0)
    model = _adapted(4)
    head = _head(model, momentum=0.9)
    step = _Step(model)
    head.update_teacher(step)  # the teacher exists (= the student) before the step
    teacher = {n: t.clone() for n, t in head.teacher_proj.state_dict().items()}
    ema = {n: t.clone() for n, t in head.ema.items()}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    head_before = [p.detach().clone() for p in head.proj.parameters()]
    pred, reg = head.terms(step, torch.device("cpu"))
    value = {"pred": pred, "reg": reg}[term]
    assert value.item() > 0
    opt = torch.optim.SGD([*trainable.values(), *head.proj.parameters()], lr=0.5)
    opt.zero_grad()
    value.backward()
    opt.step()
    moved = {n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])}
    head_moved = any(not torch.equal(p.detach(), b) for p, b in zip(head.proj.parameters(), head_before))
    assert all(p.grad is None for p in head.teacher_proj.parameters()), "the teacher head received a gradient"
    assert all(torch.equal(t, teacher[n]) for n, t in head.teacher_proj.state_dict().items())
    assert all(torch.equal(t, ema[n]) and t.grad is None for n, t in head.ema.items()), "the teacher's adapters moved"
    return moved, head_moved


@pytest.mark.parametrize("term", ["reg", "pred"])
def test_each_context_term_alone_trains_the_encoder_adapters_and_head_never_the_teacher(term):
    moved, head_moved = _step_with(term)
    assert head_moved
    assert any(n.startswith("image_encoder") or ".image_encoder." in n for n in moved), sorted(moved)
    assert not any("mask_decoder" in n for n in moved), "the context task does not reach the decoder"


def test_context_loss_decreases_when_training_adapters_and_head():
    torch.manual_seed(0)
    model = _adapted(2)
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


def test_segmentation_stage_weight_zero_skips_the_head():
    model = _adapted(5)
    head = _head(model, weight=0.0)
    loss, logs = head(_Step(model, seg_enabled=True), {"image": torch.zeros(1)})
    assert loss.item() == 0.0 and not loss.requires_grad and logs == {}
    head.update_teacher(_Step(model, seg_enabled=True))
    assert head.ema == {}, "no teacher update in a step that did not use the head"


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


def _context_run(tmp_path, name, **context):
    from adapt3d.cores import save_core
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    core = tmp_path / "core.pth"
    if not core.exists():
        save_core(randomise(load_core("sam-med3d", **TINY_SAM), seed=3), core)
    cfg = {
        "name": name, "output_dir": str(tmp_path / "runs"), "core": {"checkpoint": str(core)},
        "adapter": {"rank": 4},
        "data": {"target": {"path": str(SAMPLE_DATA / "Dataset003_SpinalCordMR"), "test": {"cases": ["sct_t2w"]}}},
        "train": {"epochs": 1, "samples_per_item": 2, "click_rounds": 1, "accelerator": "cpu"},
        "eval": {"clicks": [1], "val_clicks": [1], "save_predictions": False},
        "context_head": {"enabled": True, "pretrain_epochs": 1, "random_crops": 2, "projection_dim": 16, **context},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return run_adaptation(load_experiment(tmp_path / f"{name}.yaml"))


def test_two_stage_run_on_the_phantom_pool_and_the_regulariser_changes_the_adapter(tmp_path):
    from safetensors.torch import load_file

    pool = SAMPLE_DATA / "Dataset005_SpinePhantomUS"
    run = _context_run(tmp_path, "reg_default", pool=str(pool))
    metrics = json.loads((run / "metrics.json").read_text())
    ctx = metrics["training"]["context"]
    assert metrics["training"]["context_head"] is True
    assert ctx["pool"] == str(pool.resolve()) and ctx["pool_cases"] == ["spine_us"] and ctx["modality"] == "US"
    assert any(c.startswith("Context head") and "phantom" in c for c in metrics["caveats"])
    assert ctx["crop_mm_from"] == "field of view (auto)" and ctx["reg_weight"] == 1.0
    fov = ctx["fov_extent_mm"]["spine_us"]
    assert 0 < ctx["crop_mm"] <= 32 * 1.5  # at most the tiny core's native view (32 voxels of 1.5 mm)
    assert all(r <= e + 1e-6 for r, e in zip(ctx["region_mm"], fov)), "the region lies inside the field of view"
    assert ctx["context_steps"] > 0 and len(ctx["context_loss_history"]) == ctx["context_steps"]
    assert len(metrics["training"]["loss_history"]) == metrics["training"]["steps"]  # segmentation stage only
    assert (run / "logs" / "context" / "metrics.csv").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("extra_loss.proj") for k in ckpt["state_dict"])
    assert ckpt["state_dict"]["extra_loss._extra_state"]["ema"]

    no_reg = _context_run(tmp_path, "reg_zero", pool=str(pool), reg_weight=0.0)
    a = load_file(run / "adapter" / "adapter_model.safetensors")
    b = load_file(no_reg / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a), "reg_weight 0 and 1 gave the same adapter"


def test_missing_pool_is_refused_before_model_work(tmp_path):
    from adapt3d.errors import ConfigError

    with pytest.raises(ConfigError, match="context_head.pool"):
        _context_run(tmp_path, "bad", pool=str(tmp_path / "nowhere"))
    assert not (tmp_path / "runs" / "bad").exists()
