"""A core carries its preprocessing (window, spacing, normalisation) and the verbs use it by default."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tiny import SAMPLE_DATA, TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import core_fingerprint, save_core
from adapt3d.cores.checkpoint import read_checkpoint
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.errors import ConfigError

REPO = SAMPLE_DATA.parents[1]
DEMO_CORE = SAMPLE_DATA / "demo_core" / "demo_core.safetensors"
MRI_ADAPTER = REPO / "adapters" / "demo-mri-lora"
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR"


def test_round_trip_and_bad_values():
    prep = Preprocessing(image_size=(32, 256, 256), spacing=None, normalization="segvol")
    assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    iso = Preprocessing(64, (3.0, 3.0, 3.0), "sam-med3d")
    assert Preprocessing.from_dict(iso.to_dict()) == iso and iso.isotropic_spacing() == 3.0
    with pytest.raises(ConfigError, match=r"^x: spacing must be three positive numbers"):
        Preprocessing.from_dict({"image_size": 64, "spacing": [3.0, 0.0, 3.0], "normalization": "sam-med3d"}, where="x")
    with pytest.raises(ConfigError, match=r"^x: missing normalization, spacing; unknown spacing_mm$"):
        Preprocessing.from_dict({"image_size": 64, "spacing_mm": [3.0, 3.0, 3.0]}, where="x")
    with pytest.raises(ConfigError, match="not one isotropic value"):
        Preprocessing(64, (1.0, 1.0, 3.0), "sam-med3d").isotropic_spacing()


@pytest.mark.parametrize("fmt,name", [("safetensors", "core.safetensors"), ("official", "core.pth")])
def test_save_core_stores_preprocessing_and_load_core_restores_it(tmp_path, fmt, name):
    core = randomise(load_core("sam-med3d", **TINY_SAM), seed=3)
    assert core.preprocessing == Preprocessing(32, (1.5, 1.5, 1.5), "sam-med3d")  # spec default, window of the arch
    core.preprocessing = Preprocessing(32, (2.0, 2.0, 4.0), "modality")
    path = save_core(core, tmp_path / name, fmt=fmt)
    assert read_checkpoint(path)["adapt3d"]["preprocessing"] == {"image_size": 32, "spacing": [2.0, 2.0, 4.0], "normalization": "modality"}
    assert load_core("sam-med3d", path).preprocessing == core.preprocessing


def test_checkpoint_without_metadata_gets_the_spec_default_at_its_window(tmp_path):
    core = randomise(load_core("sam-med3d", **TINY_SAM), seed=3)
    torch.save(core.state_dict(), tmp_path / "bare.pth")  # a plain state dict: no adapt3d metadata
    assert load_core("sam-med3d", tmp_path / "bare.pth", decoder_heads=2).preprocessing == Preprocessing(32, (1.5, 1.5, 1.5), "sam-med3d")


def test_bad_stored_preprocessing_is_refused_naming_the_file(tmp_path):
    core = randomise(load_core("sam-med3d", **TINY_SAM), seed=3)
    obj = {"model_state_dict": core.state_dict(), "adapt3d": {"core": "sam-med3d", "preprocessing": {"image_size": 32}}}
    torch.save(obj, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"bad.pth: adapt3d metadata 'preprocessing': missing normalization, spacing"):
        load_core("sam-med3d", tmp_path / "bad.pth")


def test_demo_core_carries_3mm_and_its_tensors_are_the_ones_the_adapters_were_trained_on():
    core = load_core("sam-med3d", DEMO_CORE)
    assert core.preprocessing == Preprocessing(64, (3.0, 3.0, 3.0), "sam-med3d")
    for adapter in ("demo-mri-lora", "demo-us-simulated-lora"):
        recorded = json.loads((REPO / "adapters" / adapter / "adapt3d_adapter.json").read_text())["core_fingerprint"]
        assert core_fingerprint(core) == recorded  # re-saving with metadata left every tensor byte-identical


def _card_dice(adapter_dir, row: str) -> tuple[float, float]:
    """(mean, sd) ×100 of a metrics row of the shipped adapter's card, e.g. ``mri Dice@10 after``."""
    text = (adapter_dir / "ADAPTER.md").read_text()
    match = re.search(rf"^\| {re.escape(row)} \| ([\d.]+) ± ([\d.]+) \(n=(\d+)\) \|$", text, re.M)
    assert match, f"{row!r} not in {adapter_dir}/ADAPTER.md"
    return float(match[1]), float(match[2])


def test_evaluate_on_demo_core_and_shipped_adapter_reproduces_its_card(tmp_path):
    """No spacing flag: the core's stored 3 mm is used and the card's (and README's) figures come back."""
    out = tmp_path / "eval"
    args = ["evaluate", "--core", str(DEMO_CORE), "--data", str(MR), "--classes", "spleen,kidney_left,gallbladder,pancreas,aorta",
            "--min-voxels", "300", "--clicks", "10", "--no-predictions"]
    assert main([*args, "--adapter", str(MRI_ADAPTER), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["core"]["preprocessing"] == {"image_size": 64, "spacing": [3.0, 3.0, 3.0], "normalization": "sam-med3d"}
    (dom,) = metrics["domains"].values()
    for stage in ("before", "after"):
        dice = dom[stage]["summary"]["10"]["dice"]
        assert dice["n"] == 5
        mean, sd = _card_dice(MRI_ADAPTER, f"mri Dice@10 {stage}")
        assert round(100 * dice["mean"], 1) == mean and round(100 * dice["sd"], 1) == sd, (stage, dice)
    # the flag overrides the core's spacing: the frozen core's spleen at 1.5 mm is another figure
    spleen = next(r["dice"]["10"] for r in dom["before"]["per_case"] if r["class"] == "spleen")
    assert main([*args[:6], "spleen", *args[7:], "--spacing", "1.5", "--out", str(tmp_path / "eval15")]) == 0
    other = json.loads((tmp_path / "eval15" / "metrics.json").read_text())
    assert other["core"]["preprocessing"]["spacing"] == [1.5, 1.5, 1.5]
    (record,) = next(iter(other["domains"].values()))["before"]["per_case"]
    assert record["class"] == "spleen" and abs(record["dice"]["10"] - spleen) > 0.01

def test_evaluate_refuses_an_unknown_normalisation(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--core", str(DEMO_CORE), "--data", str(MR), "--normalization", "zscore", "--out", "x"])
    assert exc.value.code == 2 and "unknown normalisation 'zscore'; valid: " in capsys.readouterr().err

