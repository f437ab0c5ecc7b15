"""Loading cores from official, bare and safetensors checkpoints — strictly and safely."""

from __future__ import annotations

import argparse
import collections
import os
import pickle

import medim
import pytest
import torch
from safetensors.torch import save_file
from tiny import TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cores import save_core
from adapt3d.errors import CheckpointError, ConfigError


@pytest.fixture()
def tiny():
    return randomise(load_core("sam-med3d", **TINY_SAM), seed=3)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _official_training_checkpoint(state: dict) -> dict:
    """What the official SAM-Med3D train.py saves (Namespace args, MultiStepLR with a Counter)."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW(params, lr=8e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [120, 180], 0.1)
    assert isinstance(sched.state_dict()["milestones"], collections.Counter)
    return {
        "epoch": 200,
        "model_state_dict": state,
        "optimizer_state_dict": opt.state_dict(),
        "lr_scheduler_state_dict": sched.state_dict(),
        "losses": [0.5, 0.4],
        "dices": [0.1, 0.2],
        "best_loss": 0.4,
        "best_dice": 0.2,
        "args": argparse.Namespace(task_name="union_train", model_type="vit_b_ori", step_size=[120, 180]),
        "used_datas": ["ct_AMOS"],
    }


def test_official_training_checkpoint_loads_strict_into_ours_and_medim(tmp_path):
    ref = randomise(medim.create_model("SAM-Med3D", pretrained=False), seed=5, scale=0.02)
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(_official_training_checkpoint(ref.state_dict()), path)
    ours = load_core("sam-med3d", path)
    assert _same(ours, ref)
    fresh = medim.create_model("SAM-Med3D", pretrained=False)
    fresh.load_state_dict(torch.load(path, weights_only=False)["model_state_dict"], strict=True)
    # and what adapt3d writes in the official format loads strict into medim
    out = tmp_path / "resaved.pth"
    save_core(ours, out)
    fresh.load_state_dict(torch.load(out, weights_only=False)["model_state_dict"], strict=True)
    assert _same(fresh, ref)


@pytest.mark.parametrize("fmt", ["bare", "ddp", "safetensors", "adapt3d-official", "adapt3d-safetensors"])
def test_checkpoint_formats_round_trip(tiny, tmp_path, fmt):
    state = tiny.state_dict()
    if fmt == "bare":
        path = tmp_path / "core.pt"
        torch.save(state, path)
    elif fmt == "ddp":
        path = tmp_path / "core.pth"
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "safetensors":
        path = tmp_path / "core.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        path = save_core(tiny, tmp_path / ("core.pth" if fmt == "adapt3d-official" else "core.safetensors"),
                         fmt="official" if fmt == "adapt3d-official" else "safetensors")
    # tensor shapes give the architecture; only decoder heads are not visible in shapes
    overrides = {} if fmt.startswith("adapt3d") else {"decoder_heads": TINY_SAM["decoder_heads"]}
    loaded = load_core("sam-med3d", path, **overrides)
    assert _same(loaded, tiny)
    assert loaded.config == tiny.config
    assert not any(p.requires_grad for p in loaded.parameters())
    assert all(p.requires_grad for p in load_core("sam-med3d", path, trainable=True, **overrides).parameters())


def test_architecture_mismatch_names_keys_and_shapes(tiny, tmp_path):
    path = save_core(tiny, tmp_path / "core.pth")
    with pytest.raises(CheckpointError) as err:
        load_core("sam-med3d", path, embed_dim=64)
    msg = str(err.value)
    assert "shape mismatches" in msg and "image_encoder" in msg and str(path) in msg and "\n" not in msg
    state = {k: v for k, v in tiny.state_dict().items() if "iou_prediction_head" not in k}
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model_state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing \(mask_decoder\.iou_prediction_head.*unexpected \(extra\.weight"):
        load_core("sam-med3d", tmp_path / "broken.pth", decoder_heads=2)


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"model_state_dict": {"w": torch.zeros(1)}, "hook": _Payload(str(marker))}
    if container == "torch-zip":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load") as err:
        load_core("sam-med3d", path)
    assert "\n" not in str(err.value)
    assert not marker.exists(), "the checkpoint's code must never run"


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"not a checkpoint at all" * 10, "not a readable checkpoint"), (None, "not found")],
)
def test_bad_checkpoint_files(tmp_path, content, match):
    path = tmp_path / "core.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_core("sam-med3d", path)


def test_truncated_and_corrupt_safetensors(tiny, tmp_path):
    path = save_core(tiny, tmp_path / "core.safetensors", fmt="safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_core("sam-med3d", path)
    good = save_core(tiny, tmp_path / "ok.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_core("sam-med3d", cut)


def test_unknown_core_and_arch_key():
    with pytest.raises(ConfigError, match="unknown core 'sam-med4d'.*sam-med3d"):
        load_core("sam-med4d")
    with pytest.raises(ConfigError, match="did you mean 'embed_dim'"):
        load_core("sam-med3d", embed_dims=48)
