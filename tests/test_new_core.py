"""A new core, as docs/cores.md describes: a toy model registered with a spec and a contract that
names existing strategies gets adapt, evaluate, predict and export with no change to any verb."""

from __future__ import annotations

import json
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from tiny import SAMPLE_DATA
from torch import nn

from adapt3d.cli import main
from adapt3d.cores import CORES, CoreContract, CoreSpec, core_spec, load_core, register_core, save_core
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.tuners.targets import TARGET_TABLES, TargetTable

SPINE = SAMPLE_DATA / "Dataset003_SpinalCordMR"


@dataclass(frozen=True)
class ToyConfig:
    """The toy core's architecture: a 16³ input, ``channels`` features on a 4³ grid."""

    image_size: int = 16
    channels: int = 8


class ToyCore(nn.Module):
    """Patch features, a linear head, a bump around each positive click, the previous mask fed back."""

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyConfig()
        c = self.config.channels
        self.encoder = nn.Conv3d(1, c, kernel_size=4, stride=4)
        self.head = nn.Linear(c, 1)
        self.click_gain = nn.Parameter(torch.tensor(4.0))
        self.feedback = nn.Parameter(torch.tensor(0.5))

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def low_res_size(self) -> int:
        return self.config.image_size // 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, embeddings, points=None, labels=None, mask_logits=None, multimask_output=False):
        low = self.low_res_size
        feats = nn.functional.interpolate(embeddings, size=(low,) * 3, mode="trilinear", align_corners=False)
        logits = self.head(feats.movedim(1, -1)).movedim(-1, 1)
        grid = (torch.arange(low, dtype=torch.float32) + 0.5) * (self.image_size / low) - 0.5
        zz, yy, xx = torch.meshgrid(grid, grid, grid, indexing="ij")
        for b in range(embeddings.shape[0]):
            for p, lab in zip(points[b], labels[b]):
                if lab >= 0:
                    d2 = (zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2
                    bump = self.click_gain * torch.exp(-d2 / 8.0)
                    logits[b, 0] = logits[b, 0] + (bump if lab == 1 else -bump)
        if mask_logits is not None:
            logits = logits + self.feedback * mask_logits
        return logits, torch.zeros(embeddings.shape[0], 1)


@pytest.fixture(scope="module")
def toy_core(tmp_path_factory):
    """The toy core registered (with an adapter target table) for this module only, saved once."""
    spec = register_core(CoreSpec(
        name="toy", description="toy core (tests only)", config_cls=ToyConfig, model_cls=ToyCore,
        signature_key="encoder.weight", state_keys=("state_dict",), prefixes=(),
        infer_config=lambda state: {"channels": int(state["encoder.weight"].shape[0])},
        to_official=lambda state, meta: {"state_dict": state, "adapt3d": meta},
        contract=CoreContract(
            preprocessing=Preprocessing(image_size=16, spacing=(4.0, 4.0, 4.0), normalization="sam-med3d"),
            prompts=frozenset({"points", "mask"}), inference="windows", evaluation="crop", training="click-rounds",
        ),
    ))
    TARGET_TABLES.register("toy", TargetTable(names={"head": r"head"}))
    torch.manual_seed(0)
    path = save_core(load_core("toy"), tmp_path_factory.mktemp("toy") / "toy.pth")
    yield spec, path
    CORES.unregister("toy")
    TARGET_TABLES.unregister("toy")


def test_the_toy_core_is_recognised_by_its_spec(toy_core) -> None:
    spec, path = toy_core
    model = load_core("toy", path)
    assert core_spec(model) is spec and model.preprocessing.spacing == (4.0, 4.0, 4.0)


def test_toy_core_evaluates_adapts_predicts_and_exports(tmp_path, toy_core) -> None:
    _, path = toy_core
    out = tmp_path / "eval"
    assert main(["evaluate", "--core", str(path), "--core-type", "toy", "--data", str(SPINE), "--clicks", "1,3",
                 "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["core"]["preprocessing"]["spacing"] == [4.0, 4.0, 4.0]
    assert set(record["domains"]["SpinalCordMR"]["before"]["per_case"][0]["dice"]) == {"1", "3"}

    exp = {
        "name": "toy_run", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "core": {"name": "toy", "checkpoint": str(path), "description": "toy core (tests only)"},
        "adapter": {"method": "lora", "rank": 2, "targets": ["head"]},
        "data": {"target": {"path": str(SPINE), "test": {"cases": ["sct_t2w"]}}},
        "train": {"epochs": 1, "samples_per_item": 2, "batch_size": 2, "click_rounds": 2, "accelerator": "cpu",
                  "warmup_steps": 0, "lr": 5e-2},
        "eval": {"clicks": [1, 3], "val_clicks": [1]},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["adapt", "--config", str(tmp_path / "exp.yaml")]) == 0
    run = tmp_path / "runs" / "toy_run"
    metrics = json.loads((run / "metrics.json").read_text())
    spine = metrics["domains"]["SpinalCordMR"]
    assert spine["split"]["test"] == ["sct_t2w/spinal_cord"]
    assert spine["before"]["per_case"][0]["dice"] != spine["after"]["per_case"][0]["dice"]

    image = SPINE / "imagesTr" / "sct_t2w_0000.nii.gz"
    mask = tmp_path / "cord.nii.gz"
    assert main(["predict", "--core", str(path), "--core-type", "toy", "--adapter", str(run / "adapter"),
                 "--image", str(image), "--point", "31,27,25", "--out", str(mask)]) == 0
    written, source = nib.load(str(mask)), nib.load(str(image))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert np.asarray(written.dataobj)[31, 27, 25] == 1

    merged = tmp_path / "merged.pth"
    assert main(["export", "--core", str(path), "--core-type", "toy", "--adapter", str(run / "adapter"),
                 "--out", str(merged)]) == 0
    state = torch.load(merged, weights_only=True)["state_dict"]
    assert set(state) == set(load_core("toy", path).state_dict())
    assert not torch.equal(state["head.weight"], load_core("toy", path).state_dict()["head.weight"])
