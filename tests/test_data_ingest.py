"""nnU-Net v2 raw ingest, validation and dataset cards, on the real sample data and tiny broken datasets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from adapt3d.cli import main
from adapt3d.data.card import UNKNOWN_LICENCE, read_card
from adapt3d.data.nnunet import (
    affine_differences,
    binary_targets,
    load_case,
    normalise_modality,
    read_dataset,
    validate_dataset,
)
from adapt3d.errors import InputError

from conftest import TINY_AFFINE, TINY_SHAPE

# ---------------------------------------------------------------- helpers


def ingest_ok(root: Path, out: Path, *extra: str) -> dict:
    assert main(["ingest", str(root), "--out", str(out), *extra]) == 0
    return read_card(out)


def ingest_fails(root: Path, tmp_path: Path, capsys, *expected: tuple[str, str]) -> list[str]:
    """Run the CLI on a broken dataset: exit 3, one summary line, each (file, text) on its own line, no card."""
    out_dir = tmp_path / "cards"
    out_dir.mkdir()
    capsys.readouterr()
    rc = main(["ingest", str(root), "--out", str(out_dir / "card.yaml")])
    err = capsys.readouterr().err
    assert rc == InputError.exit_code == 3
    head, *lines = err.rstrip("\n").split("\n")
    n = len(lines)
    assert head == f"error: {root.resolve()}: {n} problem{'s' if n != 1 else ''} found"
    for file, text in expected:
        hits = [line for line in lines if line.startswith(f"  {file}: ") and text in line]
        assert len(hits) == 1, (file, text, lines)
    assert n == len(expected), lines
    assert list(out_dir.iterdir()) == []  # neither the card nor a temporary file
    return lines


def write_json(root: Path, **changes) -> None:
    info = json.loads((root / "dataset.json").read_text())
    info.update(changes)
    (root / "dataset.json").write_text(json.dumps(info))


# ---------------------------------------------------------------- the five real datasets


def test_ingest_totalseg_ct(sample_data, tmp_path):
    root = sample_data / "Dataset001_TotalSegExampleCT"
    card = ingest_ok(root, tmp_path / "ct.yaml")
    assert card["modality"] == "CT" and card["name"] == "Dataset001_TotalSegExampleCT"
    assert len(card["classes"]) == 117
    present = [name for name, c in card["classes"].items() if c["n_cases"] == 1]
    assert len(present) == 61  # np.unique on labelsTr/ts_ct.nii.gz: 61 non-zero ids
    assert card["classes"]["spleen"] == {"id": 1, "voxels": 9668, "n_cases": 1, "per_case": {"ts_ct": 9668}}
    assert card["classes"]["liver"]["voxels"] == 41692
    assert card["counts"] == {"labelled": 1, "unlabelled": 0, "test": 0, "test_labelled": 0}
    (case,) = card["cases"]
    assert case["shape"] == [122, 101, 112] and case["spacing"] == [3.0, 3.0, 3.0] and case["orientation"] == "RAS"
    assert card["licence"] == UNKNOWN_LICENCE and card["silver_standard"] is None and card["caveats"] == []
    image = root / "imagesTr" / "ts_ct_0000.nii.gz"
    assert card["files"]["imagesTr/ts_ct_0000.nii.gz"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert set(card["files"]) == {"dataset.json", "imagesTr/ts_ct_0000.nii.gz", "labelsTr/ts_ct.nii.gz"}


def test_ingest_totalseg_mr_and_spinal_cord(sample_data, tmp_path):
    mr = ingest_ok(sample_data / "Dataset002_TotalSegExampleMR", tmp_path / "mr.yaml")
    assert mr["modality"] == "MR" and mr["channel_name"] == "MRI"
    assert sum(c["n_cases"] > 0 for c in mr["classes"].values()) == 23
    assert mr["cases"][0]["orientation"] == "LPS" and mr["cases"][0]["shape"] == [117, 91, 20]
    cord = ingest_ok(sample_data / "Dataset003_SpinalCordMR", tmp_path / "cord.yaml")
    assert [c["orientation"] for c in cord["cases"]] == ["RAS", "PSR"]
    assert [c["shape"] for c in cord["cases"]] == [[42, 76, 77], [60, 55, 52]]
    assert cord["classes"]["spinal_cord"] == {
        "id": 1, "voxels": 9712, "n_cases": 2, "per_case": {"sct_t1w": 5437, "sct_t2w": 4275},
    }


def test_ingest_brain_tumour_mr(sample_data, tmp_path, capsys):
    card = ingest_ok(sample_data / "Dataset004_BrainTumourMR", tmp_path / "brain.yaml", "--licence", "BSD-3-Clause")
    assert card["cases"][0]["spacing"] == pytest.approx([0.78125, 0.78125, 6.5], abs=1e-6)
    assert card["spacing"] == {"min": [0.78125, 0.78125, 6.5], "median": [0.78125, 0.78125, 6.5], "max": [0.78125, 0.78125, 6.5]}
    assert card["cases"][0]["orientation"] == "LAS"
    assert card["classes"]["tumour"]["voxels"] == 4137
    assert card["licence"] == "BSD-3-Clause"
    out = capsys.readouterr().out
    assert "tumour (4137 voxels in 1 case)" in out and "0.78125/0.78125/0.78125" in out
    assert f"wrote {tmp_path / 'brain.yaml'}" in out


def test_ingest_unlabelled_ultrasound(sample_data, tmp_path):
    ds = read_dataset(sample_data / "Dataset005_SpinePhantomUS")
    assert ds.modality == "US" and ds.classes == {} and ds.labelled == []
    assert [c.case_id for c in ds.unlabelled] == [c.case_id for c in ds.test] == ["spine_us"]
    card = ingest_ok(ds.root, tmp_path / "us.yaml")
    assert card["counts"] == {"labelled": 0, "unlabelled": 1, "test": 1, "test_labelled": 0}
    assert card["cases"] == [{
        "id": "spine_us", "split": "test", "image": "imagesTs/spine_us_0000.nii.gz", "label": None,
        "shape": [147, 106, 104], "spacing": [0.5, 0.5, 0.5], "orientation": "LPS",
    }]


# ---------------------------------------------------------------- library API on a valid tiny dataset


def test_read_dataset_and_binary_targets(nnunet_dataset):
    ds = read_dataset(nnunet_dataset)
    assert (ds.name, ds.modality, ds.classes) == ("Dataset900_Tiny", "MR", {"liver": 1, "tumour": 2})
    assert [(c.case_id, c.split, c.label_path is not None) for c in ds.cases] == [
        ("case_a", "train", True), ("case_b", "train", True), ("case_c", "train", False), ("case_t", "test", False),
    ]
    assert [c.case_id for c in ds.unlabelled] == ["case_c", "case_t"]
    assert validate_dataset(ds) == []
    image, label = load_case(ds.cases[0])
    assert image.shape == label.shape == TINY_SHAPE and np.allclose(label.affine, TINY_AFFINE)
    targets, skipped = binary_targets(label, ds.classes, min_voxels=10)
    assert list(targets) == ["liver"] and targets["liver"].dtype == bool
    assert int(targets["liver"].sum()) == 27 and targets["liver"][1:4, 1:4, 1:4].all()
    assert skipped == {"tumour": "8 voxels < min_voxels 10"}
    targets, skipped = binary_targets(label.array, {**ds.classes, "spleen": 3}, min_voxels=1)
    assert int(targets["tumour"].sum()) == 8 and skipped == {"spleen": "absent"}
    assert load_case(ds.cases[2])[1] is None


def test_modality_names():
    assert [normalise_modality(m) for m in ("CT", "MRI", "mr", "US", "Ultrasound", "PET")] == ["CT", "MR", "MR", "US", "US", "PET"]


def test_affine_tolerances():
    a = TINY_AFFINE.copy()

    def shifted(fn) -> np.ndarray:
        b = a.copy()
        fn(b)
        return b

    assert affine_differences(a, shifted(lambda b: b.__setitem__((2, 2), 2.0 * (1 + 5e-5)))) == []
    assert affine_differences(a, shifted(lambda b: b.__setitem__((2, 2), 2.0 * (1 + 2e-4))))[0].startswith("spacing")
    assert affine_differences(a, shifted(lambda b: b.__setitem__((0, 3), -4.0 + 5e-4))) == []
    assert affine_differences(a, shifted(lambda b: b.__setitem__((0, 3), -4.0 + 2e-3)))[0].startswith("origin")
    t = 1e-3  # rotation about k by 1 mrad: direction cosines move by ~1e-3, spacing unchanged
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rotated = shifted(lambda b: b.__setitem__((slice(0, 3), slice(0, 3)), rot @ a[:3, :3]))
    assert [d.split()[0] for d in affine_differences(a, rotated)] == ["direction"]


def test_card_default_path_licence_and_kept_user_fields(nnunet_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", str(nnunet_dataset)]) == 0
    path = tmp_path / "datasets" / "Dataset900_Tiny.yaml"
    card = read_card(path)
    assert card["licence"] == "CC-BY-4.0"
    assert card["counts"] == {"labelled": 2, "unlabelled": 2, "test": 1, "test_labelled": 0}
    assert card["classes"]["liver"] == {"id": 1, "voxels": 91, "n_cases": 2, "per_case": {"case_a": 27, "case_b": 64}}
    assert card["classes"]["tumour"] == {"id": 2, "voxels": 8, "n_cases": 1, "per_case": {"case_a": 8}}
    assert card["spacing"]["median"] == [1.0, 1.5, 2.0] and card["cases"][0]["orientation"] == "RAS"
    assert "classes: 2 of 2 present" in capsys.readouterr().out
    # the user marks the labels as predictions and adds a caveat; a re-ingest keeps both
    edited = path.read_text().replace("silver_standard: null", "silver_standard: true").replace("caveats: []", "caveats: [tiny]")
    path.write_text(edited)
    assert main(["ingest", str(nnunet_dataset), "--out", "datasets/"]) == 0
    again = read_card(path)
    assert again["silver_standard"] is True and again["caveats"] == ["tiny"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["Dataset900_Tiny.yaml"]


def test_read_card_errors(tmp_path):
    with pytest.raises(InputError, match="card.yaml: dataset card not found"):
        read_card(tmp_path / "card.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InputError, match=r"bad.yaml: not valid YAML \(line 2"):
        read_card(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(InputError, match="list.yaml: not a dataset card .expected a YAML mapping, got list"):
        read_card(tmp_path / "list.yaml")
    (tmp_path / "partial.yaml").write_text("name: x\nroot: /x\n")
    with pytest.raises(InputError, match="partial.yaml: not a dataset card .missing keys: modality, licence, counts"):
        read_card(tmp_path / "partial.yaml")


# ---------------------------------------------------------------- broken datasets: CLI, one line per problem, no card


def test_missing_dataset_json(nnunet_dataset, tmp_path, capsys):
    (nnunet_dataset / "dataset.json").unlink()
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("dataset.json", "missing"))


def test_bad_dataset_json(nnunet_dataset, tmp_path, capsys):
    (nnunet_dataset / "dataset.json").write_text('{"labels": ')
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("dataset.json", "not valid JSON"))


def test_dataset_json_keys_regions_and_channels(nnunet_dataset, tmp_path, capsys):
    info = json.loads((nnunet_dataset / "dataset.json").read_text())
    del info["file_ending"]
    info["channel_names"] = {"0": "T1", "1": "T2"}
    info["labels"] = {"background": 0, "liver": 1, "tumour": [1, 2]}
    (nnunet_dataset / "dataset.json").write_text(json.dumps(info))
    ingest_fails(
        nnunet_dataset, tmp_path, capsys,
        ("dataset.json", "missing key 'file_ending'"),
        ("dataset.json", "2 channels (0: T1, 1: T2); only single-channel"),
        ("dataset.json", "label 'tumour' is a region [1, 2]; region-based labels are not supported"),
    )


def test_ingest_warns_once_naming_each_unlabelled_training_image(nnunet_dataset, tmp_path, capsys, write_nifti):
    """imagesTr images without a label stay unlabelled cases; one stderr line names each of them."""
    rng = np.random.default_rng(1)
    write_nifti(nnunet_dataset / "imagesTr" / "case_d_0000.nii.gz", rng.normal(size=TINY_SHAPE).astype(np.float32))
    card = ingest_ok(nnunet_dataset, tmp_path / "card.yaml")
    assert card["counts"]["unlabelled"] == 3  # case_c, case_d (imagesTr) and case_t (imagesTs)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: Dataset900_Tiny: 2 imagesTr images without a label in labelsTr, kept as unlabelled cases: case_c, case_d"
    ]


def test_ingest_without_unlabelled_training_images_prints_no_warning(sample_data, tmp_path, capsys):
    ingest_ok(sample_data / "Dataset003_SpinalCordMR", tmp_path / "sc.yaml")
    assert capsys.readouterr().err == ""


def test_unlabelled_image_ok_but_label_without_image_fails(nnunet_dataset, tmp_path, capsys, write_nifti):
    assert read_dataset(nnunet_dataset).unlabelled[0].case_id == "case_c"
    write_nifti(nnunet_dataset / "labelsTr" / "ghost.nii.gz", np.ones(TINY_SHAPE, np.uint8))
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("labelsTr/ghost.nii.gz", "label without image (expected imagesTr/ghost_0000.nii.gz)"))


def test_misnamed_and_multichannel_images(nnunet_dataset, tmp_path, capsys):
    images = nnunet_dataset / "imagesTr"
    (images / "case_a_0000.nii.gz").rename(images / "case_a.nii.gz")
    (images / "case_c_0000.nii.gz").rename(images / "case_c_0001.nii.gz")
    ingest_fails(
        nnunet_dataset, tmp_path, capsys,
        ("imagesTr/case_a.nii.gz", "image of labelsTr/case_a.nii.gz must be named case_a_0000.nii.gz"),
        ("imagesTr/case_c_0001.nii.gz", "only single-channel (_0000) images are supported"),
        ("dataset.json", "numTraining is 2 but imagesTr has 1 cases (1 labelled)"),
    )


def test_shape_mismatch(nnunet_dataset, tmp_path, capsys, write_nifti):
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", np.ones((8, 9, 11), np.uint8))
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("labelsTr/case_b.nii.gz", "shape (8, 9, 11) differs from image case_b_0000.nii.gz shape (8, 9, 10)"))


def test_affine_mismatch(nnunet_dataset, tmp_path, capsys, write_nifti):
    affine = TINY_AFFINE.copy()
    affine[2, 2] = 2.5
    affine[1, 3] += 0.01
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", np.ones(TINY_SHAPE, np.uint8), affine)
    (line,) = ingest_fails(nnunet_dataset, tmp_path, capsys, ("labelsTr/case_b.nii.gz", "affine differs from image case_b_0000.nii.gz"))
    assert "spacing (1, 1.5, 2.5) vs (1, 1.5, 2) mm" in line and "origin (-4, 5.01, 10) vs (-4, 5, 10) mm" in line


def test_empty_label(nnunet_dataset, tmp_path, capsys, write_nifti):
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", np.zeros(TINY_SHAPE, np.uint8))
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("labelsTr/case_b.nii.gz", "label map is empty (no foreground voxels)"))


def test_undeclared_label_id(nnunet_dataset, tmp_path, capsys, write_nifti):
    label = np.zeros(TINY_SHAPE, np.uint8)
    label[0, 0, 0], label[1, 1, 1] = 1, 7
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", label)
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("labelsTr/case_b.nii.gz", "label ids [7] are not declared in dataset.json labels"))


def test_non_integer_label(nnunet_dataset, tmp_path, capsys, write_nifti):
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", np.full(TINY_SHAPE, 0.5, np.float32))
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("labelsTr/case_b.nii.gz", "non-integer"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image(nnunet_dataset, tmp_path, capsys, write_nifti, bad):
    image = np.zeros(TINY_SHAPE, np.float32)
    image[2, 3, 4] = image[5, 5, 5] = bad
    write_nifti(nnunet_dataset / "imagesTr" / "case_c_0000.nii.gz", image)
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("imagesTr/case_c_0000.nii.gz", "2 voxels are NaN/Inf"))


@pytest.mark.parametrize(
    ("shape", "text"),
    [((8, 9), "expected a 3D volume, got 2D shape (8, 9)"), ((8, 9, 10, 2), "expected a 3D volume, got 4D shape (8, 9, 10, 2)")],
)
def test_not_3d_image(nnunet_dataset, tmp_path, capsys, write_nifti, shape, text):
    write_nifti(nnunet_dataset / "imagesTs" / "case_t_0000.nii.gz", np.zeros(shape, np.float32))
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("imagesTs/case_t_0000.nii.gz", text))


def test_truncated_file(nnunet_dataset, tmp_path, capsys):
    path = nnunet_dataset / "imagesTr" / "case_b_0000.nii.gz"
    data = path.read_bytes()
    assert len(gzip.decompress(data)) > 352  # a real, complete file before cutting
    path.write_bytes(data[: len(data) // 2])
    ingest_fails(nnunet_dataset, tmp_path, capsys, ("imagesTr/case_b_0000.nii.gz", "truncated or corrupt NIfTI data"))


def test_header_only_validation_skips_voxels(nnunet_dataset, write_nifti):
    image = np.zeros(TINY_SHAPE, np.float32)
    image[0, 0, 0] = np.nan
    write_nifti(nnunet_dataset / "imagesTr" / "case_c_0000.nii.gz", image)
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", np.ones((8, 9, 11), np.uint8))
    ds = read_dataset(nnunet_dataset)
    assert [p.split(":")[0] for p in validate_dataset(ds, check_voxels=False)] == ["labelsTr/case_b.nii.gz"]
    assert [p.split(":")[0] for p in validate_dataset(ds)] == ["labelsTr/case_b.nii.gz", "imagesTr/case_c_0000.nii.gz"]


def test_all_problems_reported_at_once(nnunet_dataset, tmp_path, capsys, write_nifti):
    write_json(nnunet_dataset, labels={"background": 0, "liver": 1})  # tumour (2) in case_a is now undeclared
    write_nifti(nnunet_dataset / "labelsTr" / "case_b.nii.gz", np.ones((8, 9, 11), np.uint8))
    write_nifti(nnunet_dataset / "labelsTr" / "ghost.nii.gz", np.ones(TINY_SHAPE, np.uint8))
    write_nifti(nnunet_dataset / "imagesTr" / "case_c_0000.nii.gz", np.full(TINY_SHAPE, np.inf, np.float32))
    write_nifti(nnunet_dataset / "imagesTs" / "case_t_0000.nii.gz", np.zeros((8, 9), np.float32))
    ingest_fails(
        nnunet_dataset, tmp_path, capsys,
        ("labelsTr/ghost.nii.gz", "label without image"),
        ("labelsTr/case_a.nii.gz", "label ids [2] are not declared"),
        ("labelsTr/case_b.nii.gz", "shape (8, 9, 11) differs"),
        ("imagesTr/case_c_0000.nii.gz", "720 voxels are NaN/Inf"),
        ("imagesTs/case_t_0000.nii.gz", "2D shape (8, 9)"),
    )


# ---------------------------------------------------------------- output location


def test_unwritable_output_dir(nnunet_dataset, tmp_path, capsys):
    """An existing folder the user cannot write to: exit code 5, one line, nothing written.

    Root ignores permission bits, so for root the folder is a procfs one (/proc/self), which no
    user may create files in.
    """
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        target = locked if not os.access(locked, os.W_OK) else Path("/proc/self")
        assert target.is_dir() and not os.access(target, os.W_OK)
        before = sorted(p.name for p in target.iterdir())
        assert main(["ingest", str(nnunet_dataset), "--out", str(target / "card.yaml")]) == 5
        assert capsys.readouterr().err.strip() == f"error: {target}: output directory is not writable"
        assert sorted(p.name for p in target.iterdir()) == before
        assert not (target / "card.yaml").exists()
    finally:
        locked.chmod(0o755)


def test_output_under_a_file(nnunet_dataset, tmp_path, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    assert main(["ingest", str(nnunet_dataset), "--out", str(blocker / "card.yaml")]) == 5
    assert capsys.readouterr().err.startswith(f"error: {blocker}: cannot create output directory")
    assert blocker.read_text() == "x"
