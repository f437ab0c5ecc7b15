"""Automatic segmentation with learned class prompts (adapt3d.auto) on tiny cores and the real sample data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import SAMPLE_DATA, TINY_SAM, changed_by_fit, nudge_trainable, randomise

from adapt3d import load_core
from adapt3d.auto.predict import lattice_windows, predict_auto
from adapt3d.auto.prompts import (
    ClassPrompts,
    load_class_prompts,
    save_class_prompts,
)
from adapt3d.auto.training import auto_round, auto_training
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.data.domain_config import DomainSection
from adapt3d.data.domains import load_domain
from adapt3d.data.imageio import load_volume
from adapt3d.infer.whole_volume import WholeVolumeConfig, WholeVolumePredictor
from adapt3d.train.config import TrainSection, load_experiment
from adapt3d.train.data import CropDataset
from adapt3d.train.module import AdaptModule
from adapt3d.train.run import run_adaptation
from adapt3d.tuners import AdapterConfig, add_adapters, load_adapter

CORD = SAMPLE_DATA / "Dataset003_SpinalCordMR"
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"
T2 = CORD / "imagesTr" / "sct_t2w_0000.nii.gz"


@pytest.fixture(scope="module")
def core_path(tmp_path_factory):
    return save_core(randomise(load_core("sam-med3d", **TINY_SAM), seed=5), tmp_path_factory.mktemp("core") / "tiny.pth")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, core_path):
    """A real adaptation with class prompts: spinal cord MR, trained on the T1w case, tested on the T2w case."""
    tmp = tmp_path_factory.mktemp("auto_run")
    cfg = {
        "name": "cord_auto", "seed": 0, "output_dir": str(tmp / "runs"),
        "core": {"checkpoint": str(core_path), "description": "random tiny core (tests only)"},
        "adapter": {"method": "lora", "rank": 2},
        "data": {"target": {"path": str(CORD), "test": {"cases": ["sct_t2w"]}}, "target_spacing": [3.0, 3.0, 3.0]},
        "train": {"epochs": 1, "samples_per_item": 2, "batch_size": 2, "click_rounds": 2, "accelerator": "cpu", "warmup_steps": 0},
        "eval": {"clicks": [1], "val_clicks": [1], "save_predictions": False},
        "auto": {"enabled": True, "tokens_per_class": 2},
    }
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_adaptation(load_experiment(path))


def tiny_model(core_path, seed: int = 0):
    return nudge_trainable(add_adapters(load_core("sam-med3d", core_path), AdapterConfig(rank=2), verbose=False), 0.3, seed)


def test_prompt_tokens_are_a_prompt_of_their_own(core_path):
    core = load_core("sam-med3d", core_path)
    emb = core.encode(torch.randn(1, 1, 32, 32, 32))
    tokens = torch.randn(3, 2, core.config.prompt_dim)
    logits, _ = core.decode(emb, None, None, prompt_tokens=tokens)
    assert logits.shape == (3, 1, *(core.low_res_size,) * 3)
    assert not torch.allclose(logits[0], logits[1])  # the tokens decide the mask
    alone, _ = core.decode(emb, None, None, prompt_tokens=tokens[:1])
    assert torch.allclose(alone[0], logits[0], atol=1e-5)
    pts, labels = torch.tensor([[[16.0, 16.0, 16.0]]]), torch.tensor([[1]])
    clicked, _ = core.decode(emb, pts, labels)
    both, _ = core.decode(emb, pts, labels, prompt_tokens=tokens[:1])
    assert both.shape == clicked.shape and not torch.allclose(both, clicked)


def test_a_class_prompt_gets_gradient_only_for_its_own_tokens(core_path):
    model = tiny_model(core_path)
    prompts = ClassPrompts.for_core(model.core, ["liver", "spleen"], [5, 1], 2, seed=0)
    emb = model.encode(torch.randn(2, 1, 32, 32, 32))
    target = (torch.rand(2, 1, 32, 32, 32) > 0.7).float()
    loss, _ = auto_round(model, prompts, emb, torch.tensor([0, 0]), target, torch.ones_like(target))
    loss.backward()
    assert prompts.tokens.grad[0].abs().sum() > 0 and torch.equal(prompts.tokens.grad[1], torch.zeros_like(prompts.tokens.grad[1]))
    assert all(p.grad is None for n, p in model.core.named_parameters() if ".lora_" not in n)  # the frozen core gets none


def test_training_changes_only_adapter_and_prompts(core_path):
    """Real Lightning steps with the automatic round: core weights bit-identical, LoRA and prompts moved."""
    model = tiny_model(core_path)
    domain = load_domain(DomainSection(path=str(MR), classes=("liver", "spleen")), "target", seed=0, all_test=True)
    dataset = CropDataset(domain.split.test, "MR", size=32, target_spacing=(3.0, 3.0, 3.0), normalization="sam-med3d", seed=0)
    assert dataset.class_names == ("liver", "spleen") and int(dataset[1]["class_index"]) == 1  # items: liver, spleen
    auto, data = auto_training(dataset, model.core, tokens_per_class=1, random_crops=1, weight=1.0, seed=0)
    assert data[0]["auto_image"].shape == (1, 1, 32, 32, 32)
    module = AdaptModule(model, TrainSection(epochs=1, batch_size=2, click_rounds=2, warmup_steps=0, accelerator="cpu"), seed=0)
    module.auto = auto
    changed = changed_by_fit(module, data, steps=2)
    assert "auto.prompts.tokens" in changed and any(".lora_" in n for n in changed)
    assert all(".lora_" in n or n == "auto.prompts.tokens" for n in changed), sorted(changed)


def test_lattice_windows_cover_the_volume():
    windows = lattice_windows((70, 20, 32), 32, 24)
    assert sorted({w.start[0] for w in windows}) == [0, 24, 38] and {w.start[1] for w in windows} == {-6} and {w.start[2] for w in windows} == {0}
    covered = np.zeros((70, 20, 32), bool)
    for w in windows:
        covered[w.overlap(covered.shape)[0]] = True
    assert covered.all()


def test_auto_inference_is_deterministic_multiclass_and_on_the_input_grid(core_path):
    model = tiny_model(core_path, seed=1)
    prompts = ClassPrompts.for_core(model.core, ["a", "b", "c"], [3, 7, 9], 1, seed=4)
    image = load_volume(T2)
    config = WholeVolumeConfig(spacing=1.5, normalization="sam-med3d")
    first = predict_auto(model, prompts, image, "MR", config, probabilities=True)
    again = predict_auto(model, prompts, image, "MR", config, probabilities=True)
    assert np.array_equal(first.labels, again.labels) and first.labels.shape == image.shape
    work = WholeVolumePredictor(model, config).prepare(image, "MR").work
    assert np.array_equal(first.affine, image.affine) and first.windows == len(lattice_windows(work.shape, 32, 24)) > 1
    probs = np.stack([first.probabilities[n] for n in ("a", "b", "c")])
    expected = np.where(probs.max(0) > 0.5, np.array([3, 7, 9])[probs.argmax(0)], 0)
    assert np.array_equal(first.labels, expected)
    assert len(set(np.unique(first.labels)) - {0}) >= 2, "the test prompts should label more than one class"
    only_b = predict_auto(model, prompts, image, "MR", config, ["b"])
    assert np.array_equal(only_b.labels == 7, first.probabilities["b"] > 0.5)


def test_prompts_file_round_trip_and_bad_files(tmp_path):
    prompts = ClassPrompts(["cord", "csf"], [1, 2], torch.randn(2, 3, 24))
    path = save_class_prompts(prompts, tmp_path / "p.safetensors")
    back = load_class_prompts(path)
    assert back.class_names == ("cord", "csf") and back.label_values == (1, 2) and torch.equal(back.tokens, prompts.tokens)
    assert set(load_file(str(path))) == {"tokens"}  # names live in the metadata, no pickle
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    from adapt3d.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a valid class-prompts file"):
        load_class_prompts(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="has no class prompts"):
        load_class_prompts(tmp_path)


def test_an_adapt_run_trains_saves_and_evaluates_the_prompts(run_dir, core_path):
    adapter = run_dir / "adapter"
    prompts = load_class_prompts(adapter)
    assert prompts.class_names == ("spinal_cord",) and prompts.label_values == (1,) and prompts.tokens_per_class == 2
    init = ClassPrompts.for_core(load_core("sam-med3d", core_path), ["spinal_cord"], [1], 2, seed=0)
    assert not torch.equal(prompts.tokens, init.tokens)  # trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cord = next(iter(metrics["domains"].values()))
    assert "0" in cord["after"]["summary"] and "0" not in cord["before"]["summary"]
    assert [r["case"] for r in cord["after"]["per_case"]] == ["sct_t2w"] and "0" in cord["after"]["per_case"][0]["dice"]
    assert "auto.prompts.tokens" in torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_a_reloaded_adapter_reproduces_the_run(run_dir, core_path):
    model = load_adapter(load_core("sam-med3d", core_path), run_dir / "adapter")
    prompts = load_class_prompts(run_dir / "adapter")
    image = load_volume(T2)
    config = WholeVolumeConfig(spacing=3.0, normalization="sam-med3d")
    a = predict_auto(model, prompts, image, "MR", config)
    b = predict_auto(load_adapter(load_core("sam-med3d", core_path), run_dir / "adapter"), load_class_prompts(run_dir / "adapter"),
                     image, "MR", config)
    assert np.array_equal(a.labels, b.labels)
    from adapt3d.evaluate.metrics import dice

    gt = load_volume(CORD / "labelsTr" / "sct_t2w.nii.gz", kind="label").array == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recorded = next(iter(metrics["domains"].values()))["after"]["per_case"][0]["dice"]["0"]
    assert dice(a.mask("spinal_cord"), gt) == pytest.approx(recorded, abs=1e-9)  # the evaluation's "0 clicks" is this prediction


def test_predict_auto_cli_end_to_end(run_dir, core_path, tmp_path, capsys):
    out, probs = tmp_path / "cord.nii.gz", tmp_path / "probs"
    args = ["predict", "--auto", "--core", str(core_path), "--adapter", str(run_dir / "adapter"), "--image", str(T2),
            "--spacing", "3", "--out", str(out), "--probabilities", str(probs)]
    assert main(args) == 0
    assert "automatic segmentation" in capsys.readouterr().out
    written, image = nib.load(str(out)), nib.load(str(T2))
    assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    labels = np.asarray(written.dataobj)
    assert set(np.unique(labels)) <= {0, 1}
    prob = np.asarray(nib.load(str(probs / "spinal_cord.nii.gz")).dataobj)
    assert np.array_equal(labels == 1, prob > 0.5)


def test_export_carries_the_prompts_and_predict_uses_them(run_dir, core_path, tmp_path):
    merged = tmp_path / "merged.safetensors"
    assert main(["export", "--core", str(core_path), "--adapter", str(run_dir / "adapter"), "--out", str(merged)]) == 0
    carried = tmp_path / "merged.class_prompts.safetensors"
    assert torch.equal(load_class_prompts(carried).tokens, load_class_prompts(run_dir / "adapter").tokens)
    common = ["--image", str(T2), "--spacing", "3"]
    assert main(["predict", "--auto", "--core", str(merged), "--class-prompts", str(carried), *common, "--out", str(tmp_path / "m.nii.gz")]) == 0
    assert main(["predict", "--auto", "--core", str(core_path), "--adapter", str(run_dir / "adapter"), *common,
                 "--out", str(tmp_path / "a.nii.gz")]) == 0
    m, a = (np.asarray(nib.load(str(tmp_path / n)).dataobj) for n in ("m.nii.gz", "a.nii.gz"))
    assert (m != a).mean() < 1e-3  # merged LoRA equals the adapter up to float rounding


@pytest.mark.parametrize("case,match", [
    ("unknown-class", "no class prompt for 'liver'"),
    ("no-prompts", "adapter has no class prompts"),
    ("with-point", "needs --refine CLASS"),
    ("refine-no-click", "give the correcting clicks"),
    ("refine-unknown", "no class prompt for 'liver'"),
    ("refine-outside", "lies outside the volume"),
    ("no-adapter", "--auto needs --adapter"),
])
def test_predict_auto_refuses_bad_input(case, match, run_dir, core_path, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    adapter = run_dir / "adapter"
    extra = []
    if case == "unknown-class":
        extra = ["--classes", "spinal_cord,liver"]
    elif case == "no-prompts":
        from adapt3d.tuners import save_adapter

        adapter = save_adapter(tiny_model(core_path), tmp_path / "plain")
    elif case == "with-point":
        extra = ["--point", "4,4,4"]
    elif case == "refine-no-click":
        extra = ["--refine", "spinal_cord"]
    elif case == "refine-unknown":
        extra = ["--refine", "liver", "--point", "4,4,4"]
    elif case == "refine-outside":
        extra = ["--refine", "spinal_cord", "--negative", "4,4,400"]
    where = [] if case == "no-adapter" else ["--adapter", str(adapter)]
    rc = main(["predict", "--auto", "--core", str(core_path), *where, "--image", str(T2), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error: ") and match in err and "\n" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_evaluate_auto_adds_click_zero(run_dir, core_path, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--core", str(core_path), "--adapter", str(run_dir / "adapter"), "--data", str(CORD), "--clicks", "1",
            "--spacing", "3", "--no-predictions", "--out", str(out), "--auto"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clicks"] == [1]  # the schema's click counts stay positive: 0 lives in the evaluations
    cord = metrics["domains"]["SpinalCordMR"]
    assert cord["after"]["clicks"] == [0, 1] and cord["before"]["clicks"] == [1]
    assert cord["after"]["summary"]["0"]["dice"]["n"] == 2 and "0" not in cord["before"]["summary"]
    from adapt3d.report.runs import load_run
    from adapt3d.report.tables import results_table

    rows = {r[1]: r for r in results_table(load_run(out)).rows}
    assert set(rows) == {"0 (auto)", "1"} and rows["0 (auto)"][2] == "—"  # no automatic mask before adaptation
    assert rows["0 (auto)"][3] == f"{100 * cord['after']['summary']['0']['dice']['mean']:.1f} ± {100 * cord['after']['summary']['0']['dice']['sd']:.1f}"
    from adapt3d.report.tables import auto_table

    table = auto_table(load_run(out))
    pairs = cord["after"]["per_case"]
    (row,) = table.rows  # one class: no "all" row
    auto_dice, one_before, one_after = (np.mean([r["dice"][k] for r in runs]) for k, runs in
                                        (("0", pairs), ("1", cord["before"]["per_case"]), ("1", pairs)))
    assert row[:2] == ["SpinalCordMR", "spinal_cord"] and row[5] == "2"
    assert [c.split(" ± ")[0] for c in row[2:5]] == [f"{100 * v:.1f}" for v in (auto_dice, one_before, one_after)]
    assert "Class prompts trained for: spinal_cord." in table.caption
    capsys.readouterr()
    plain = tmp_path / "plain"
    from adapt3d.tuners import save_adapter

    save_adapter(tiny_model(core_path), plain)
    assert main([*args[:4], str(plain), *args[5:-2], str(tmp_path / "e2"), "--auto"]) != 0
    assert "adapter has no class prompts" in capsys.readouterr().err and not (tmp_path / "e2").exists()


def test_clicks_refine_an_automatic_mask_from_its_logits(core_path):
    """Inside the click's window the result is the clicks' pass started from the automatic logits
    (not from zeros), blended over the prior; elsewhere, and for the other classes, the automatic result stands."""
    from torch.nn import functional as F

    from adapt3d.auto.predict import blended_class_logits, predict_working
    from adapt3d.auto.refine import PRIOR_WEIGHT, predict_refined, refine_logits
    from adapt3d.data.preprocess import centred_window, normalise
    from adapt3d.infer.whole_volume import BLEND_WEIGHTS

    model = tiny_model(core_path, seed=1).eval()
    prompts = ClassPrompts.for_core(model.core, ["a", "b"], [3, 7], 1, seed=4)
    image = load_volume(T2)
    config = WholeVolumeConfig(spacing=1.5, normalization="sam-med3d")
    prepared = WholeVolumePredictor(model, config).prepare(image, "MR")
    prior = blended_class_logits(model, prompts, prepared, [0, 1], config)[0][0]
    click = (20.0, 18.0, 17.0)
    refined, windows = refine_logits(model, prior, prepared, [click], [0], config)
    window = centred_window(prepared.grid.to_working(np.asarray(click)), 32)
    assert [w.start for w in windows] == [window.start]
    with torch.no_grad():
        emb = model.encode(torch.from_numpy(normalise(window.extract(prepared.work), "MR", "sam-med3d"))[None, None])
        rel = torch.tensor(prepared.grid.to_working(np.asarray(click)) - np.asarray(window.start)).float().round()[None, None]

        def corrected(start):
            low, _ = model.decode(emb, rel, torch.zeros(1, 1, dtype=torch.long), mask_logits=start)
            return F.interpolate(low, size=(32,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()

        low = model.low_res_size
        from_prior = corrected(F.avg_pool3d(torch.from_numpy(window.extract(prior))[None, None], 32 // low))
        from_zeros = corrected(torch.zeros(1, 1, low, low, low))
    assert np.abs(from_prior - from_zeros).max() > 1e-2  # the starting mask prompt matters on this core
    w = BLEND_WEIGHTS.get("gaussian")(32)
    in_volume, in_window = window.overlap(prior.shape)
    expected = (PRIOR_WEIGHT * prior[in_volume] + w[in_window] * from_prior[in_window]) / (PRIOR_WEIGHT + w[in_window])
    assert np.allclose(refined[in_volume], expected, atol=1e-4)
    outside = np.ones(prior.shape, bool)
    outside[in_volume] = False
    assert outside.any() and np.allclose(refined[outside], prior[outside], rtol=1e-5, atol=1e-6)
    auto = predict_working(model, prompts, prepared, config, probabilities=True)
    both = predict_refined(model, prompts, prepared, config, "b", [click], [0], probabilities=True)
    assert np.array_equal(both.probabilities["a"], auto.probabilities["a"])
    assert not np.array_equal(both.probabilities["b"], auto.probabilities["b"])
    assert both.labels.shape == image.shape and both.windows == auto.windows + 1


def test_predict_auto_refine_cli(run_dir, core_path, tmp_path, capsys):
    common = ["predict", "--auto", "--core", str(core_path), "--adapter", str(run_dir / "adapter"), "--image", str(T2),
              "--spacing", "3"]
    assert main([*common, "--out", str(tmp_path / "auto.nii.gz")]) == 0
    assert main([*common, "--refine", "spinal_cord", "--point", "20,18,17", "--negative", "10,10,10",
                 "--out", str(tmp_path / "refined.nii.gz")]) == 0
    assert "spinal_cord refined by 2 clicks" in capsys.readouterr().out
    auto, refined = (nib.load(str(tmp_path / n)) for n in ("auto.nii.gz", "refined.nii.gz"))
    assert refined.shape == auto.shape and np.allclose(refined.affine, auto.affine)
    assert set(np.unique(np.asarray(refined.dataobj))) <= {0, 1}


def test_evaluate_cvpr25_auto_adds_step_zero(run_dir, core_path, tmp_path):
    from adapt3d.evaluate.metrics import dice
    from adapt3d.report.runs import load_run
    from adapt3d.report.tables import cvpr25_table

    out = tmp_path / "cvpr"
    assert main(["evaluate", "--protocol", "cvpr25", "--core", str(core_path), "--adapter", str(run_dir / "adapter"),
                 "--data", str(CORD), "--spacing", "3", "--no-predictions", "--out", str(out), "--auto"]) == 0
    cord = json.loads((out / "metrics.json").read_text())["domains"]["SpinalCordMR"]
    after, before = cord["after"], cord["before"]
    assert after["clicks"] == [0, 1, 2, 3, 4, 5, 6] and before["clicks"] == [1, 2, 3, 4, 5, 6]
    assert after["automatic"]["classes"] == ["spinal_cord"] and "0" not in before["summary"]
    model = load_adapter(load_core("sam-med3d", core_path), run_dir / "adapter")
    config = WholeVolumeConfig(spacing=3.0, normalization="sam-med3d")
    for rec in after["per_case"]:
        image = load_volume(rec["image"])
        gt = load_volume(rec["label"], kind="label").array == rec["label_id"]
        expected = dice(predict_auto(model, load_class_prompts(run_dir / "adapter"), image, "MR", config).mask("spinal_cord"), gt)
        assert rec["dice"]["0"] == pytest.approx(expected, abs=1e-9)
    plain = tmp_path / "plain"
    assert main(["evaluate", "--protocol", "cvpr25", "--core", str(core_path), "--adapter", str(run_dir / "adapter"),
                 "--data", str(CORD), "--spacing", "3", "--no-predictions", "--out", str(plain)]) == 0
    without = json.loads((plain / "metrics.json").read_text())["domains"]["SpinalCordMR"]["after"]
    scores = ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")  # the 6 challenge steps are untouched (times differ)
    assert [after["challenge"][k] for k in scores] == [without["challenge"][k] for k in scores] and "automatic" not in without
    table = cvpr25_table(load_run(out))
    column = table.columns.index("DSC auto (0 clicks)")
    cells = {row[1]: row[column] for row in table.rows}
    assert cells["before"] == "—" and cells["after"].split(" ± ")[0] == f"{100 * after['summary']['0']['dice']['mean']:.1f}"
