"""Image I/O by file ending: NIfTI, MetaImage and NRRD carry the same arrays and exact geometry everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from tiny import SAMPLE_DATA, TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.data.card import ingest
from adapt3d.data.imageio import check_output_ending, data_files, load_volume, save_volume, supported_endings
from adapt3d.errors import ConfigError

SPINE = SAMPLE_DATA / "Dataset003_SpinalCordMR"
PHANTOM = SAMPLE_DATA / "Dataset005_SpinePhantomUS" / "imagesTs" / "spine_us_0000.nii.gz"
LPS = np.diag([-1.0, -1.0, 1.0])
#: An oblique voxel -> RAS affine: rotation (1/7)[[2,3,6],[3,-6,2],[6,2,-3]] (each voxel axis 31° off its
#: nearest world axis: i ~ S, j ~ P, k ~ R), 1.75 mm voxels; every entry is exact in float32 (NIfTI's sform).
OBLIQUE = np.array([[0.5, 0.75, 1.5, -20.5], [0.75, -1.5, 0.5, 13.25], [1.5, 0.5, -0.75, 7.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def core_path(tmp_path_factory):
    core = randomise(load_core("sam-med3d", **TINY_SAM), seed=3)
    return save_core(core, tmp_path_factory.mktemp("core") / "tiny.pth")


def itk_geometry(path: Path) -> tuple[tuple, tuple, tuple]:
    """Spacing, origin, direction of a file as SimpleITK itself reads it (independent of adapt3d)."""
    image = sitk.ReadImage(str(path))
    return image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def expected_itk(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's LPS spacing, origin and direction of a voxel -> RAS affine, computed by hand."""
    linear = LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return spacing, LPS @ affine[:3, 3], (linear / spacing).ravel()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"])
def test_every_ending_round_trips_voxels_and_oblique_geometry(ending, tmp_path):
    label = np.zeros((9, 10, 11), np.uint8)
    label[2:5, 3:8, 1:4] = 3
    label[0, 0, 0] = 1  # a corner voxel fixes the axis order
    path = save_volume(label, OBLIQUE, tmp_path / f"lab{ending}")
    back = load_volume(path, kind="label")
    assert np.array_equal(back.array, label) and np.array_equal(back.affine, OBLIQUE)
    assert back.spacing == (1.75, 1.75, 1.75) and back.orientation == "SPR"
    if ending.startswith(".nii"):
        return
    spacing, origin, direction = itk_geometry(path)
    want = expected_itk(OBLIQUE)
    assert np.array_equal(spacing, want[0]) and np.array_equal(origin, want[1]) and np.allclose(direction, want[2], rtol=0, atol=1e-15)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), label.transpose())  # ITK arrays are (k, j, i)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("lab")] == []  # no temporary left
    assert bool(data_files(path)) == (ending in (".mhd", ".nhdr"))


def test_real_phantom_as_metaimage_reads_back_identically(tmp_path):
    """The PLUS phantom was MetaImage: NIfTI -> .mha -> same voxels and affine; SimpleITK agrees with nibabel."""
    nifti = load_volume(PHANTOM)
    mha = load_volume(save_volume(nifti.array, nifti.affine, tmp_path / "spine_us.mha", reference=nifti))
    assert np.array_equal(mha.array, nifti.array) and np.array_equal(mha.affine, nifti.affine)
    direct = sitk.ReadImage(str(PHANTOM))  # SimpleITK's own NIfTI reader, not nibabel
    assert np.allclose(direct.GetOrigin(), expected_itk(nifti.affine)[1], atol=1e-4)
    assert np.allclose(direct.GetSpacing(), nifti.spacing, atol=1e-6)


def test_nrrd_prediction_read_by_simpleitk_has_the_inputs_geometry(core_path, tmp_path):
    """A lab's NRRD (written by SimpleITK, random oblique direction) -> predict --out .nrrd: same geometry.

    NRRD stores spacing x direction as one vector per axis, so SimpleITK's own read/write round trip
    moves spacing and direction by up to one unit in the last place (~2e-16): that, and nothing more.
    """
    rotation, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(100, 20, (30, 34, 38)).astype(np.float32))
    image.SetSpacing((1.1, 0.9, 1.7))
    image.SetOrigin((12.3, -45.6, 78.9))
    image.SetDirection(tuple(rotation.ravel()))
    src, out = tmp_path / "us.nrrd", tmp_path / "mask.nrrd"
    sitk.WriteImage(image, str(src))
    rc = main(["predict", "--core", str(core_path), "--image", str(src), "--point", "15,17,19", "--mode", "crop", "--out", str(out)])
    assert rc == 0
    for got, want in zip(itk_geometry(out), itk_geometry(src)):
        np.testing.assert_allclose(got, want, rtol=4e-16, atol=4e-16)
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize() and mask.GetPixelID() == sitk.sitkUInt8


def _dataset(root: Path, ending: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> Path:
    save_volume(image, affine, root / "imagesTr" / f"sct_0000{ending}")
    save_volume(label, affine, root / "labelsTr" / f"sct{ending}")
    info = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "spinal_cord": 1}, "numTraining": 1,
            "file_ending": ending, "licence": "MIT (Spinal Cord Toolbox testing data)"}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def _comparable(card: dict, ending: str) -> dict:
    """The card without what names the files (paths, hashes), which differ between formats by design."""
    cases = [{k: v for k, v in case.items() if k not in ("image", "label")} for case in card["cases"]]
    names = sorted(name.replace(ending, "<ending>") for name in card["files"])
    return {**{k: v for k, v in card.items() if k not in ("root", "files", "cases")}, "cases": cases, "file_names": names}


def test_same_volume_as_nifti_metaimage_nrrd_gives_same_card_numbers_and_predictions(core_path, tmp_path):
    image = load_volume(SPINE / "imagesTr" / "sct_t1w_0000.nii.gz")
    label = load_volume(SPINE / "labelsTr" / "sct_t1w.nii.gz", kind="label")
    cards, metrics, masks = {}, {}, {}
    for ending in (".nii.gz", ".mha", ".nrrd"):
        name = ending.strip(".").replace(".", "")
        root = _dataset(tmp_path / name / "Dataset950_ObliqueCord", ending, image.array, label.array.astype(np.uint8), OBLIQUE)
        cards[ending] = _comparable(ingest(root, out=tmp_path / f"{name}.yaml")[1], ending)
        out = tmp_path / f"eval_{name}"
        assert main(["evaluate", "--core", str(core_path), "--data", str(root), "--clicks", "1,3", "--min-voxels", "10", "--out", str(out)]) == 0
        dom = json.loads((out / "metrics.json").read_text())["domains"]["ObliqueCord"]["before"]
        metrics[ending] = [(r["case"], r["class"], r["dice"], r["nsd"]) for r in dom["per_case"]]
        prediction = out / dom["per_case"][0]["prediction"]
        assert prediction.name.endswith(ending)  # written in the input's format
        mask = load_volume(prediction, kind="label")
        assert np.array_equal(mask.affine, OBLIQUE) and mask.shape == image.shape
        if ending != ".nii.gz":
            assert itk_geometry(prediction) == itk_geometry(root / "imagesTr" / f"sct_0000{ending}")
        masks[ending] = mask.array
    assert cards[".nii.gz"]["cases"][0]["orientation"] == "SPR" and cards[".nii.gz"]["spacing"]["min"] == [1.75] * 3
    assert cards[".mha"] == cards[".nii.gz"] == cards[".nrrd"]
    assert metrics[".mha"] == metrics[".nii.gz"] == metrics[".nrrd"] and metrics[".mha"][0][2]["3"] > 0
    assert np.array_equal(masks[".mha"], masks[".nii.gz"]) and np.array_equal(masks[".nrrd"], masks[".nii.gz"])
    assert main(["report", str(tmp_path / "eval_nrrd"), "--out", str(tmp_path / "report")]) == 0  # overlays read NRRD
    overlays = json.loads((tmp_path / "report" / "report.json").read_text())["overlays"]
    assert overlays and all(o["shown"] for o in overlays), overlays


def test_pseudolabels_of_a_metaimage_dataset_stay_metaimage(nnunet_dataset, tmp_path):
    """.mhd headers name a separate data file: images are copied with it, pseudo-labels written beside theirs."""
    from adapt3d.data.nnunet import read_dataset

    for path in sorted(nnunet_dataset.glob("*/*.nii.gz")):
        kind = "label" if path.parent.name.startswith("labels") else "image"
        volume = load_volume(path, kind=kind)
        save_volume(volume.array.astype(np.uint8) if kind == "label" else volume.array, volume.affine, path.with_name(path.name.replace(".nii.gz", ".mhd")))
        path.unlink()
    info = json.loads((nnunet_dataset / "dataset.json").read_text())
    (nnunet_dataset / "dataset.json").write_text(json.dumps({**info, "file_ending": ".mhd"}))
    out = tmp_path / "Dataset903_Pseudo"
    assert main(["pseudolabel", "--data", str(nnunet_dataset), "--every", "3", "--backend", "nearest", "--out", str(out)]) == 0
    ds = read_dataset(out)
    assert ds.info["file_ending"] == ".mhd" and [c.case_id for c in ds.labelled] == ["case_a", "case_b"]
    for case in ds.labelled:
        image, label = load_volume(case.image_path), load_volume(case.label_path, kind="label")
        assert np.array_equal(image.array, load_volume(nnunet_dataset / "imagesTr" / case.image_path.name).array)
        assert np.array_equal(label.affine, image.affine) and data_files(case.label_path)


def test_detached_headers_pair_with_their_data_files_and_are_hashed(tmp_path, capsys):
    image = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    label = np.zeros((8, 9, 10), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    root = _dataset(tmp_path / "Dataset951_Detached", ".mhd", image, label, OBLIQUE)
    assert main(["ingest", str(root), "--out", str(tmp_path / "card.yaml")]) == 0
    card = ingest(root, out=tmp_path / "card.yaml")[1]
    assert set(card["files"]) == {"dataset.json", "imagesTr/sct_0000.mhd", "imagesTr/sct_0000.zraw", "labelsTr/sct.mhd", "labelsTr/sct.zraw"}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    return err


def test_mixed_endings_are_refused_with_one_line_per_folder(nnunet_dataset, tmp_path, capsys):
    for case in ("case_b", "case_c"):  # two images and one label converted to MetaImage, dataset.json still says .nii.gz
        src = nnunet_dataset / "imagesTr" / f"{case}_0000.nii.gz"
        save_volume(load_volume(src).array, load_volume(src).affine, src.with_name(f"{case}_0000.mha"))
        src.unlink()
    lab = nnunet_dataset / "labelsTr" / "case_b.nii.gz"
    save_volume(load_volume(lab, kind="label").array, load_volume(lab).affine, lab.with_name("case_b.mha"))
    lab.unlink()
    assert main(["ingest", str(nnunet_dataset), "--out", str(tmp_path / "card.yaml")]) != 0
    err = _error(capsys)
    lines = [ln.strip() for ln in err.splitlines()[1:] if "numTraining" not in ln]  # 2 declared, 1 .nii.gz left
    assert lines == [
        "imagesTr/: mixed file endings: 2 .mha (e.g. case_b_0000.mha), but dataset.json file_ending is '.nii.gz'; convert every file to one format",
        "labelsTr/: mixed file endings: 1 .mha (e.g. case_b.mha), but dataset.json file_ending is '.nii.gz'; convert every file to one format",
    ]
    assert not (tmp_path / "card.yaml").exists()


def test_unsupported_file_ending_is_one_line(nnunet_dataset, tmp_path, capsys):
    info = json.loads((nnunet_dataset / "dataset.json").read_text())
    (nnunet_dataset / "dataset.json").write_text(json.dumps({**info, "file_ending": ".png"}))
    assert main(["ingest", str(nnunet_dataset), "--out", str(tmp_path / "card.yaml")]) != 0
    assert "dataset.json: file_ending '.png' is not supported (use .nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr)" in _error(capsys)


def test_check_output_ending_names_the_path_and_the_endings(core_path, tmp_path, capsys):
    assert [check_output_ending(f"dir.v2/mask{e}") for e in supported_endings()] == list(supported_endings())
    for bad in ("mask.png", "mask.gz", "mask", ".nii.gz", "mask.MHA"):
        with pytest.raises(ConfigError, match=f"^{bad}: output must end in .nii.gz, .nii, .mha, .mhd, .nrrd or .nhdr"):
            check_output_ending(bad)
    rc = main(["predict", "--core", str(core_path), "--image", str(PHANTOM), "--point", "5,5,5", "--out", str(tmp_path / "m.tif")])
    assert rc == ConfigError.exit_code and "m.tif: output must end in" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_image_files_are_one_line_naming_the_file(tmp_path):
    from adapt3d.errors import InputError

    bad = tmp_path / "x.mha"
    bad.write_bytes(b"not a MetaImage at all")
    with pytest.raises(InputError, match=r"x\.mha: not a readable image file") as info:
        load_volume(bad)
    assert "\n" not in str(info.value)
    flat = save_volume(np.zeros((4, 5, 1), np.float32), np.eye(4), tmp_path / "flat.nrrd")
    with pytest.raises(InputError, match=r"flat\.nrrd: expected a 3D volume, got a degenerate shape \(4, 5, 1\)"):
        load_volume(flat)
    with pytest.raises(InputError, match=r"x\.tif: not a supported image file"):
        load_volume(tmp_path / "x.tif")
