"""SegVol through the same verbs as SAM-Med3D: adapt (its own prompt recipe), evaluate, export.

A tiny SegVol (random weights, the real CLIP vocabulary size so the built-in tokenizer applies)
is adapted to the embedded MRI with LoRA: text prompts of the class names, no mask feedback,
its zoom-out-zoom-in evaluation with the class name alone as 0 clicks, CT retention, a report,
and a merged export in the release's key layout.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny import SAMPLE_DATA, randomise

from adapt3d.cli import main
from adapt3d.cores import core_spec, load_core, save_core
from adapt3d.data.domains import load_domain
from adapt3d.train.config import load_experiment
from adapt3d.train.recipes import RECIPES, crops_for, object_boxes

MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT"
TINY_SEGVOL = {
    "image_size": (16, 64, 64), "patch_size": (4, 16, 16), "embed_dim": 32, "depth": 1, "num_heads": 1,
    "mlp_dim": 64, "decoder_depth": 1, "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16,
    "text_hidden_size": 16, "text_layers": 1, "text_heads": 1, "text_intermediate_size": 32,
}


@pytest.fixture(scope="module")
def segvol_core(tmp_path_factory):
    core = randomise(load_core("segvol", **TINY_SEGVOL), seed=3)
    return save_core(core, tmp_path_factory.mktemp("segvol") / "tiny_segvol.safetensors", fmt="safetensors")


def _experiment(tmp_path, core_path) -> dict:
    return {
        "name": "segvol_mr", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "core": {"name": "segvol", "checkpoint": str(core_path), "description": "random tiny SegVol (tests only)"},
        "adapter": {"method": "lora", "rank": 2, "targets": ["encoder.qkv", "decoder.attn"]},
        "data": {
            "target": {"path": str(MR), "classes": ["liver", "spleen"], "test": {"classes": ["spleen"]}, "silver_standard": True},
            "reference": {"path": str(CT), "classes": ["spleen"], "silver_standard": True},
        },
        "train": {"epochs": 1, "samples_per_item": 2, "batch_size": 2, "click_rounds": 2, "accelerator": "cpu",
                  "warmup_steps": 0, "lr": 1e-2},
        "eval": {"clicks": [1, 2], "val_clicks": [1], "options": {"text": True, "zoom_in": False}},
    }


def test_segvol_crops_keep_segvol_geometry(segvol_core) -> None:
    """Crops of the model input in (z, y, x) at the input's spacing, the whole volume scaled to [0, 1]."""
    core = load_core("segvol", segvol_core)
    exp = _experiment(segvol_core.parent, segvol_core)
    exp["train"]["augment"] = False  # intensity augmentation would leave [0, 1]
    cfg = load_experiment(_write(segvol_core.parent, exp))
    target = load_domain(cfg.data.target, "target", seed=0)
    recipe = RECIPES.get(core_spec(core).contract.training)
    crops = crops_for(recipe, list(target.split.train), target.modality, size=core.image_size, spacing=None,
                      normalization="segvol", seed=0, train=cfg.train)
    sample = crops[0]
    assert sample["image"].shape == (1, 16, 64, 64) and sample["label"].shape == (1, 16, 64, 64)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert crops.class_names == ("liver",) and int(sample["class_index"]) == 0
    assert sample["label"].sum() > 0  # centred on the object


def test_object_boxes_bound_the_object() -> None:
    label = torch.zeros(2, 1, 4, 6, 6)
    label[0, 0, 1:3, 2:5, 0:2] = 1
    known = torch.ones_like(label)
    boxes = object_boxes(label, known)
    assert boxes[0].tolist() == [1, 2, 0, 2, 4, 1]
    assert boxes[1].tolist() == [0, 0, 0, 3, 5, 5]  # no object: the known region


def _write(directory, cfg: dict):
    path = directory / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_segvol_adapts_end_to_end(tmp_path, segvol_core, capsys) -> None:
    path = _write(tmp_path, _experiment(tmp_path, segvol_core))
    assert main(["adapt", "--config", str(path)]) == 0
    run = tmp_path / "runs" / "segvol_mr"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["core"]["name"] == "segvol"
    mr = metrics["domains"]["TotalSegExampleMR"]
    for stage in ("before", "after"):
        assert mr[stage]["clicks"] == [0, 1, 2]  # 0 = the class name alone
        assert set(mr[stage]["per_case"][0]["dice"]) == {"0", "1", "2"}
    assert mr["before"]["per_case"][0]["dice"] != mr["after"]["per_case"][0]["dice"]  # the adapter changed outputs
    ret = metrics["retention"]
    assert ret["frozen"] == metrics["domains"]["TotalSegExampleCT"]["before"]["summary"]["1"]["dice"]["mean"]
    assert "merged" in ret

    # the core's weights are untouched; the adapter holds LoRA tensors only
    from safetensors.torch import load_file

    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)

    # report and merged export in the release layout ("model." + the release keys)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    merged = tmp_path / "merged.bin"
    assert main(["export", "--core", str(segvol_core), "--core-type", "segvol", "--adapter", str(run / "adapter"),
                 "--out", str(merged)]) == 0
    state = torch.load(merged, weights_only=True)
    core = load_core("segvol", segvol_core)
    assert set(state) == {"model." + k for k in core.state_dict()}
    reloaded = load_core("segvol", merged, **{k: TINY_SEGVOL[k] for k in ("num_heads", "text_heads")})
    assert any(not torch.equal(reloaded.state_dict()[k], v) for k, v in core.state_dict().items())  # LoRA was merged in
    merged_ct = ret["merged"]
    assert merged_ct["mergeable"] and 0.0 <= merged_ct["dice"]["1"] <= 1.0  # the merged weights were evaluated on CT
