"""Automatic segmentation (adapt3d.auto) on SegVol: one learned text-embedding-sized vector per class.

A tiny SegVol (random weights, the real CLIP vocabulary size so the built-in tokenizer applies) is
adapted with LoRA and class vectors on the embedded spinal-cord MR (trained on the T1w case,
tested on the T2w case), then predicts and is evaluated without any click.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from scipy import special
from tiny import SAMPLE_DATA, changed_by_fit, randomise
from torch.utils.data import default_collate

from adapt3d.auto.evaluate import AutoMasks, evaluation_prompts
from adapt3d.auto.predict import ZoomVolume, predict_auto, predict_working
from adapt3d.auto.prompts import (
    ClassPrompts,
    check_prompts_fit,
    load_class_prompts,
    save_class_prompts,
)
from adapt3d.auto.training import auto_training, uniform_centre
from adapt3d.cli import main
from adapt3d.cores import load_core, save_core
from adapt3d.cores.segvol.zoom import segment_volume, segvol_normalise, volume_to_model
from adapt3d.data.domain_config import DomainSection
from adapt3d.data.domains import load_domain
from adapt3d.data.imageio import load_volume
from adapt3d.data.preprocess import centred_window, to_working_grid
from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.evaluate.evaluators import EVALUATORS
from adapt3d.evaluate.metrics import dice
from adapt3d.evaluate.run import PROTOCOLS, run_evaluation
from adapt3d.infer.whole_volume import WholeVolumeConfig
from adapt3d.train.checks import check_experiment
from adapt3d.train.config import TrainSection, load_experiment
from adapt3d.train.module import AdaptModule
from adapt3d.train.recipes import RECIPES, StepContext, crops_for, prompt_rounds
from adapt3d.train.run import run_adaptation
from adapt3d.tuners import AdapterConfig, add_adapters, load_adapter

CORD = SAMPLE_DATA / "Dataset003_SpinalCordMR"
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
T2 = CORD / "imagesTr" / "sct_t2w_0000.nii.gz"
TINY_SEGVOL = {
    "image_size": (16, 64, 64), "patch_size": (4, 16, 16), "embed_dim": 32, "depth": 1, "num_heads": 1,
    "mlp_dim": 64, "decoder_depth": 1, "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16,
    "text_hidden_size": 16, "text_layers": 1, "text_heads": 1, "text_intermediate_size": 32,
}
TARGETS = ("encoder.qkv", "decoder.attn")
NATIVE = WholeVolumeConfig(normalization="segvol")  # SegVol's zoom keeps its own geometry and settings


@pytest.fixture(scope="module")
def core_path(tmp_path_factory):
    core = randomise(load_core("segvol", **TINY_SEGVOL), seed=3)
    return save_core(core, tmp_path_factory.mktemp("segvol") / "tiny_segvol.safetensors", fmt="safetensors")


def _experiment(tmp, core_path, **auto) -> dict:
    return {
        "name": "cord_segvol_auto", "seed": 0, "output_dir": str(tmp / "runs"),
        "core": {"name": "segvol", "checkpoint": str(core_path), "description": "random tiny SegVol (tests only)"},
        "adapter": {"method": "lora", "rank": 2, "targets": list(TARGETS)},
        "data": {"target": {"path": str(CORD), "test": {"cases": ["sct_t2w"]}}},
        "train": {"epochs": 1, "samples_per_item": 2, "batch_size": 2, "click_rounds": 2, "accelerator": "cpu",
                  "warmup_steps": 0, "lr": 1e-2},
        "eval": {"clicks": [1], "val_clicks": [1], "save_predictions": False, "options": {"zoom_in": False}},
        "auto": {"enabled": True, **auto},
    }


def _load(tmp, cfg: dict):
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_experiment(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, core_path):
    """A real adaptation of the tiny SegVol with class vectors (spinal cord: T1w → T2w)."""
    tmp = tmp_path_factory.mktemp("segvol_auto_run")
    return run_adaptation(_load(tmp, _experiment(tmp, core_path)))


def test_class_vectors_start_from_the_cores_text_embedding(core_path):
    core = load_core("segvol", core_path)
    prompts = ClassPrompts.for_core(core, ["spinal_cord", "liver"], [1, 5], modality="MR")
    assert prompts.kind == "text" and prompts.tokens.shape == (2, 1, 32)  # one vector of the text-embedding size
    with torch.no_grad():
        assert torch.allclose(prompts.tokens[:, 0], core.encode_text(["spinal cord", "liver"], "MR"))
        emb = core.encode(torch.rand(1, 1, 16, 64, 64))
        learned, _ = core.decode(emb, **prompts.decode_inputs(torch.tensor([0])))
        named, _ = core.decode(emb, text=["spinal cord"], modality="MR")
    assert torch.allclose(learned, named, atol=1e-6)  # the vector stands where the encoded class name stood
    small = load_core("segvol", **{**TINY_SEGVOL, "text_vocab_size": 64})  # no tokenizer fits: seeded noise
    first, again, other = (ClassPrompts.for_core(small, ["liver"], [5], seed=s).tokens for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other) and first.shape == (1, 1, 32)
    with pytest.raises(ConfigError, match="1 per class"):
        ClassPrompts.for_core(core, ["liver"], [5], 2)


def test_training_changes_only_adapter_and_class_vectors(core_path):
    """Real Lightning steps: core weights bit-identical, LoRA and class vectors moved; random crops
    cut as the SegVol recipe cuts (z, y, x), native spacing, the whole volume normalised; the prompt
    rounds take the class vector as their text."""
    model = add_adapters(load_core("segvol", core_path), AdapterConfig(rank=2, targets=TARGETS), verbose=False)
    items = load_domain(DomainSection(path=str(MR), classes=("liver", "spleen")), "target", seed=0, all_test=True).split.test
    train = TrainSection(epochs=1, batch_size=2, click_rounds=1, warmup_steps=0, accelerator="cpu", augment=False, lr=1e-2)
    dataset = crops_for(RECIPES.get("prompt-rounds"), items, "MR", size=(16, 64, 64), spacing=None, normalization="segvol",
                        seed=0, train=train)
    auto, data = auto_training(dataset, model.core, tokens_per_class=1, random_crops=1, weight=1.0, seed=0)
    sample = data[0]
    assert sample["auto_image"].shape == (1, 1, 16, 64, 64) and dataset.class_names == ("liver", "spleen")
    image = load_volume(items[0].case.image_path)
    volume = segvol_normalise(to_working_grid(image, None)[0].transpose(2, 1, 0))
    window = centred_window(uniform_centre(volume.shape, (16, 64, 64), np.random.default_rng([0, 0, 0, 1])), (16, 64, 64))
    assert np.allclose(sample["auto_image"][0, 0].numpy(), window.extract(volume))

    batch = default_collate([data[0], data[1]])
    emb = model.encode(batch["image"])
    ctx = StepContext(train, "MR", dataset.class_names)
    named = prompt_rounds(model, emb, batch, np.random.default_rng(7), ctx)
    batch["class_prompts"] = auto.prompts.decode_inputs(batch["class_index"])
    learned = prompt_rounds(model, emb, batch, np.random.default_rng(7), ctx)
    assert torch.allclose(named, learned, atol=1e-5)  # initialised from the name: the same rounds
    learned.backward()
    assert auto.prompts.tokens.grad.abs().sum() > 0  # and the rounds train the vectors
    model.zero_grad(set_to_none=True)
    auto.zero_grad(set_to_none=True)

    module = AdaptModule(model, train, seed=0, modality="MR", class_names=dataset.class_names)
    module.auto = auto
    changed = changed_by_fit(module, data, steps=1)
    assert "auto.prompts.tokens" in changed and any(".lora_" in n for n in changed)
    assert all(".lora_" in n or n == "auto.prompts.tokens" for n in changed), sorted(changed)


def test_predict_auto_on_segvol_is_multiclass_deterministic_and_on_the_input_grid(core_path):
    core = load_core("segvol", core_path)
    prompts = ClassPrompts.for_core(core, ["spinal_cord", "liver", "spleen"], [2, 5, 7], modality="MR")
    image = load_volume(T2)
    first = predict_auto(core, prompts, image, "MR", NATIVE, probabilities=True)
    again = predict_auto(core, prompts, image, "MR", NATIVE)
    assert np.array_equal(first.labels, again.labels) and first.labels.shape == image.shape
    assert np.array_equal(first.affine, image.affine)
    probs = np.stack([first.probabilities[n] for n in prompts.class_names])
    expected = np.where(probs.max(0) > 0.5, np.array([2, 5, 7])[probs.argmax(0)], 0)
    assert np.array_equal(first.labels, expected)
    assert len(set(np.unique(first.labels)) - {0}) >= 2, "the test vectors should label more than one class"
    logits, _ = segment_volume(core, image, text=prompts.tokens[1].detach(), modality="MR")  # zoom-out-zoom-in, the vector as text
    assert np.allclose(first.probabilities["liver"], special.expit(logits), atol=1e-6)


def test_saved_class_vectors_reproduce_predict_auto(run_dir, core_path, tmp_path):
    adapter = run_dir / "adapter"
    prompts = load_class_prompts(adapter)
    assert prompts.kind == "text" and prompts.class_names == ("spinal_cord",) and prompts.tokens.shape == (1, 1, 32)
    init = ClassPrompts.for_core(load_core("segvol", core_path), ["spinal_cord"], [1], modality="MR")
    assert not torch.equal(prompts.tokens, init.tokens)  # trained
    resaved = save_class_prompts(prompts, tmp_path / "cord.class_prompts.safetensors")
    assert load_class_prompts(resaved).kind == "text" and torch.equal(load_class_prompts(resaved).tokens, prompts.tokens)

    common = ["predict", "--auto", "--core", str(core_path), "--core-type", "segvol", "--image", str(T2)]
    assert main([*common, "--adapter", str(adapter), "--out", str(tmp_path / "a.nii.gz"), "--probabilities", str(tmp_path / "p")]) == 0
    assert main([*common, "--adapter", str(adapter), "--class-prompts", str(resaved), "--out", str(tmp_path / "b.nii.gz")]) == 0
    a, b = (nib.load(str(tmp_path / n)) for n in ("a.nii.gz", "b.nii.gz"))
    assert a.shape == load_volume(T2).shape and np.allclose(a.affine, nib.load(str(T2)).affine)
    model = load_adapter(load_core("segvol", core_path), adapter)
    direct = predict_auto(model, load_class_prompts(adapter), load_volume(T2), "MR", NATIVE)
    assert np.array_equal(np.asarray(a.dataobj), direct.labels) and np.array_equal(np.asarray(b.dataobj), direct.labels)
    prob = np.asarray(nib.load(str(tmp_path / "p" / "spinal_cord.nii.gz")).dataobj)
    assert np.array_equal(direct.labels == 1, prob > 0.5)


def test_evaluate_auto_on_segvol_adds_click_zero(run_dir, core_path, tmp_path):
    cord = json.loads((run_dir / "metrics.json").read_text())["domains"]["SpinalCordMR"]
    assert cord["after"]["clicks"] == [0, 1] and cord["after"]["zero_clicks"] == "auto"
    assert cord["before"]["clicks"] == [1] and "0" not in cord["before"]["summary"]
    model = load_adapter(load_core("segvol", core_path), run_dir / "adapter")
    image = load_volume(T2)
    working = ZoomVolume(*volume_to_model(image), "MR")
    result = predict_working(model, load_class_prompts(run_dir / "adapter"), working, NATIVE, zoom_in=False)
    gt = load_volume(CORD / "labelsTr" / "sct_t2w.nii.gz", kind="label").array == 1
    assert dice(result.mask("spinal_cord"), gt) == pytest.approx(cord["after"]["per_case"][0]["dice"]["0"], abs=1e-9)

    out = run_evaluation(core=str(core_path), core_type="segvol", adapter=str(run_dir / "adapter"), domain=DomainSection(path=str(CORD)),
                         options={"clicks": (1,), "text": True, "zoom_in": False}, out=tmp_path / "eval", save_predictions=False,
                         auto=True)
    evaluated = json.loads((out / "metrics.json").read_text())["domains"]["SpinalCordMR"]
    assert evaluated["before"]["zero_clicks"] == "text" and evaluated["after"]["zero_clicks"] == "auto"  # auto replaces text alone
    assert evaluated["after"]["summary"]["0"]["dice"]["n"] == 2 and evaluated["before"]["summary"]["0"]["dice"]["n"] == 2
    t2 = next(r for r in evaluated["after"]["per_case"] if r["case"] == "sct_t2w")
    assert t2["dice"]["0"] == pytest.approx(cord["after"]["per_case"][0]["dice"]["0"], abs=1e-9)


def test_the_checks_refuse_what_cannot_work(run_dir, core_path, tmp_path, capsys):
    problems = check_experiment(_load(tmp_path, _experiment(tmp_path, core_path)))
    assert not [p for p in problems if p.startswith("auto.")], problems  # SegVol with its prompt rounds: allowed
    problems = check_experiment(_load(tmp_path, _experiment(tmp_path, core_path, tokens_per_class=2)))
    assert any(p.startswith("auto.tokens_per_class: segvol's class prompts are text (1 per class)") for p in problems), problems
    sam2d = _experiment(tmp_path, core_path)
    sam2d["core"] = {"name": "sam2d"}
    assert any(p.startswith("auto.enabled: not available for sam2d") for p in check_experiment(_load(tmp_path, sam2d)))

    core = load_core("segvol", core_path)
    with pytest.raises(CheckpointError, match="kind 'tokens', the segvol core takes 'text'"):
        check_prompts_fit(ClassPrompts(["a"], [1], torch.zeros(1, 1, 32)), core, "p")
    with pytest.raises(CheckpointError, match="dimension 16, the core's prompt space 32"):
        check_prompts_fit(ClassPrompts(["a"], [1], torch.zeros(1, 1, 16), "text"), core, "p")
    with pytest.raises(ValueError, match="take 1 per class"):
        ClassPrompts(["a"], [1], torch.zeros(1, 2, 32), "text")
    assert EVALUATORS.get("zoom").automatic and EVALUATORS.get("crop").automatic and PROTOCOLS.get("cvpr25").automatic
    with pytest.raises(ConfigError, match="not to sam2d's slice-wise protocol"):
        evaluation_prompts(str(run_dir / "adapter"), EVALUATORS.get("slicewise"))
    with pytest.raises(CheckpointError, match="kind 'tokens'"):
        AutoMasks(core, ClassPrompts(["a"], [1], torch.zeros(1, 1, 32)), EVALUATORS.get("zoom").protocol(), "MR")

    tokens = save_class_prompts(ClassPrompts(["spinal_cord"], [1], torch.zeros(1, 2, 24)), tmp_path / "sam.safetensors")
    out = tmp_path / "x.nii.gz"
    rc = main(["predict", "--auto", "--core", str(core_path), "--core-type", "segvol", "--class-prompts", str(tokens),
               "--image", str(T2), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "kind 'tokens'" in err and "\n" not in err and not out.exists()
