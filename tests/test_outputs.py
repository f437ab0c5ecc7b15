"""One rule for existing outputs across verbs, and export formats that follow the file ending."""

from __future__ import annotations

import zipfile

import pytest
import torch
from safetensors import safe_open
from tiny import TINY_SAM, nudge_trainable, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import core_fingerprint, save_core
from adapt3d.tuners import AdapterConfig, add_adapters, save_adapter


@pytest.fixture(scope="module")
def core_and_adapter(tmp_path_factory):
    """A tiny core checkpoint and a LoRA adapter on it whose weights are not zero (so merging changes the core)."""
    root = tmp_path_factory.mktemp("export")
    core_path = save_core(randomise(load_core("sam-med3d", **TINY_SAM), seed=5), root / "core.pth")
    model = nudge_trainable(add_adapters(load_core("sam-med3d", core_path), AdapterConfig(rank=4), verbose=False), 0.1, seed=1)
    save_adapter(model, root / "adapter")
    return core_path, root / "adapter"


def _export(core_and_adapter, out, *extra) -> int:
    core_path, adapter = core_and_adapter
    return main(["export", "--core", str(core_path), "--adapter", str(adapter), "--out", str(out), *extra])


def test_export_format_follows_the_ending(core_and_adapter, tmp_path):
    assert _export(core_and_adapter, tmp_path / "merged.safetensors") == 0
    with safe_open(str(tmp_path / "merged.safetensors"), framework="pt") as f:  # a real safetensors file
        assert "image_encoder.patch_embed.proj.weight" in f.keys() and "adapt3d" in f.metadata()
    assert _export(core_and_adapter, tmp_path / "merged.pth") == 0
    assert zipfile.is_zipfile(tmp_path / "merged.pth")  # the torch format: {'model_state_dict': ...}
    official = torch.load(tmp_path / "merged.pth", weights_only=True)
    assert set(official) >= {"model_state_dict"}
    a, b = load_core("sam-med3d", tmp_path / "merged.safetensors"), load_core("sam-med3d", tmp_path / "merged.pth")
    assert core_fingerprint(a) == core_fingerprint(b) != core_fingerprint(load_core("sam-med3d", core_and_adapter[0]))


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("merged.onnx", [], "merged.onnx: the ending decides the format: use .safetensors (safetensors) or .pth/.pt/.bin"),
        ("merged", [], "merged: the ending decides the format"),
        ("merged.pth", ["--format", "safetensors"], "merged.pth: format 'safetensors' disagrees with the ending '.pth' (official)"),
        ("merged.safetensors", ["--format", "official"], "format 'official' disagrees with the ending '.safetensors'"),
    ],
)
def test_export_refuses_an_ending_it_cannot_honour(core_and_adapter, tmp_path, capsys, name, extra, message):
    assert _export(core_and_adapter, tmp_path / name, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_existing_output_unless_overwrite(core_and_adapter, tmp_path, capsys):
    out = tmp_path / "merged.pth"
    out.write_bytes(b"keep")
    assert _export(core_and_adapter, out) == 5
    assert capsys.readouterr().err.strip() == f"error: {out}: already exists (choose another output, or --overwrite to replace it)"
    assert out.read_bytes() == b"keep"
    assert _export(core_and_adapter, out, "--overwrite") == 0
    assert zipfile.is_zipfile(out)


@pytest.fixture
def finished_eval(core_and_adapter, nnunet_dataset, tmp_path):
    """A finished ``adapt3d evaluate`` run of the tiny core on the tiny dataset."""
    out = tmp_path / "eval"
    args = ["evaluate", "--core", str(core_and_adapter[0]), "--data", str(nnunet_dataset), "--clicks", "1",
            "--min-voxels", "1", "--no-predictions", "--out", str(out)]
    assert main(args) == 0
    return out, args


def _existing(tmp_path):
    """An existing output folder with content, to be left untouched."""
    path = tmp_path / "existing"
    path.mkdir()
    (path / "keep.txt").write_text("keep")
    return path


@pytest.mark.parametrize("verb", ["report", "simulate-us", "pseudolabel", "evaluate"])
def test_every_verb_refuses_an_existing_output_unless_overwrite(verb, finished_eval, nnunet_dataset, tmp_path, capsys):
    run_dir, eval_args = finished_eval
    out = _existing(tmp_path)
    image, label = nnunet_dataset / "imagesTr" / "case_a_0000.nii.gz", nnunet_dataset / "labelsTr" / "case_a.nii.gz"
    args = {
        "report": ["report", str(run_dir), "--out", str(out)],
        "simulate-us": ["simulate-us", str(image), "--label", str(label), "--out", str(out)],
        "pseudolabel": ["pseudolabel", "--data", str(nnunet_dataset), "--every", "2", "--backend", "nearest", "--out", str(out)],
        "evaluate": [*eval_args[:-1], str(run_dir)],
    }[verb]
    if verb == "evaluate":
        out = run_dir  # a finished run is the existing output
        before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}: ") and "--overwrite" in err and "\n" not in err, err
    if verb == "evaluate":
        assert sorted(p.name for p in out.iterdir()) == before
    else:
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
