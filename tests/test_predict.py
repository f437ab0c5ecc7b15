"""``adapt3d predict`` and the preprocessing that maps crops back onto the input grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from tiny import SAMPLE_DATA, TINY_SAM, nudge_trainable, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.data.imageio import Volume, load_volume
from adapt3d.data.preprocess import centred_window, from_working_grid, to_working_grid

CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT" / "imagesTr" / "ts_ct_0000.nii.gz"
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR" / "imagesTr" / "ts_mr_sm_0000.nii.gz"


@pytest.fixture(scope="module")
def core_path(tmp_path_factory):
    core = randomise(load_core("sam-med3d", **TINY_SAM), seed=11)
    return save_core(core, tmp_path_factory.mktemp("core") / "tiny.pth")


def test_working_grid_round_trip_is_exact_for_labels():
    """LPS, 3 mm MR label → RAS 1.5 mm (nearest) → back: identical to the input labels."""
    label = load_volume(SAMPLE_DATA / "Dataset002_TotalSegExampleMR" / "labelsTr" / "ts_mr_sm.nii.gz", kind="label")
    assert label.orientation == "LPS"
    work, grid = to_working_grid(label, (1.5, 1.5, 1.5), order=0)
    assert work.shape == tuple(2 * s for s in label.shape)  # 3 mm → 1.5 mm doubles each axis
    assert np.allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), 1.5)
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")
    back = from_working_grid(work, grid, order=0)
    assert np.array_equal(back, label.array)
    # a voxel's world position is the same in both grids
    ijk = np.array([10.0, 20.0, 5.0])
    world = label.affine @ np.append(ijk, 1)
    assert np.allclose(grid.affine @ np.append(grid.to_working(ijk), 1), world)


def test_window_extract_and_paste_pad_with_zeros():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7) + 1
    w = centred_window(np.array([0.0, 3.0, 6.0]), 4)
    crop = w.extract(a)
    assert crop.shape == (4, 4, 4) and crop[0, 0, 0] == 0  # padded corner
    assert crop[2, 2, 2] == a[0, 3, 6]  # centre voxel sits at index size // 2
    pasted = w.paste(crop, a.shape)
    assert pasted[0, 3, 6] == a[0, 3, 6] and pasted[4, 0, 0] == 0


@pytest.mark.parametrize("image", [CT, MR])
def test_predict_writes_mask_on_input_grid(core_path, image, tmp_path):
    out = tmp_path / "mask.nii.gz"
    rc = main(["predict", "--core", str(core_path), "--image", str(image), "--point", "40,40,10", "--negative", "45,41,11", "--out", str(out)])
    assert rc == 0
    src, res = nib.load(str(image)), nib.load(str(out))
    assert res.shape == src.shape
    assert np.array_equal(res.affine, src.affine)
    assert np.array_equal(res.header.get_qform(), src.header.get_qform())
    assert res.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(res.dataobj))) <= {0, 1}


def test_predict_is_deterministic(core_path, tmp_path):
    outs = []
    for name in ("a.nii.gz", "b.nii.gz"):
        main(["predict", "--core", str(core_path), "--image", str(MR), "--point", "60,40,10", "--out", str(tmp_path / name)])
        outs.append(np.asarray(nib.load(str(tmp_path / name)).dataobj))
    assert np.array_equal(*outs)


def _write(path, array, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing-image", "file not found"),
        ("image-2d", "expected a 3D volume"),
        ("image-4d", "expected a 3D volume, got 4D"),
        ("truncated", "truncated or corrupt"),
        ("point-outside", "outside the volume"),
        ("missing-core", "checkpoint not found"),
        ("corrupt-core", "not a readable checkpoint"),
        ("wrong-arch", "not a sam-med3d checkpoint"),
        ("bad-out", "out.txt: output must end in .nii.gz, .nii, .mha, .mhd, .nrrd or .nhdr (the ending decides the format)"),
        ("negative-point", "point (-1.0, 4.0, 4.0) lies outside the volume of shape (12, 12, 12)"),
        ("negative-point-equals", "point (4.0, -2.5, 4.0) lies outside the volume"),
        ("out-exists", "out.nii.gz: already exists (choose another output, or --overwrite to replace it)"),
    ],
)
def test_predict_bad_input(core_path, tmp_path, capsys, case, match):
    image, core, point, out = tmp_path / "img.nii.gz", str(core_path), "4,4,4", tmp_path / "out.nii.gz"
    rng = np.random.default_rng(0)
    if case != "missing-image":
        _write(image, rng.normal(size=(12, 12, 12)).astype(np.float32))
    if case == "image-2d":
        _write(image, rng.normal(size=(12, 12)).astype(np.float32))
    elif case == "image-4d":
        _write(image, rng.normal(size=(12, 12, 12, 2)).astype(np.float32))
    elif case == "truncated":
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    elif case == "point-outside":
        point = "4,4,40"
    elif case == "missing-core":
        core = str(tmp_path / "nope.pth")
    elif case == "corrupt-core":
        (tmp_path / "bad.pth").write_bytes(b"\x00garbage" * 50)
        core = str(tmp_path / "bad.pth")
    elif case == "wrong-arch":
        import torch

        torch.save({"model_state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")
        core = str(tmp_path / "other.pth")
    elif case == "bad-out":
        out = tmp_path / "out.txt"
    elif case == "negative-point":
        point = "-1,4,4"  # parsed as a value, not as an option
    elif case == "out-exists":
        out.write_bytes(b"keep")
    point_args = ["--point=4,-2.5,4"] if case == "negative-point-equals" else ["--point", point]
    rc = main(["predict", "--core", core, "--image", str(image), *point_args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("error: ") and match in err and "\n" not in err
    assert out.read_bytes() == b"keep" if case == "out-exists" else not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary file left behind"


def test_predict_overwrite_replaces_an_existing_mask(core_path, tmp_path):
    out = tmp_path / "mask.nii"
    out.write_bytes(b"old")
    args = ["predict", "--core", str(core_path), "--image", str(MR), "--point", "60,40,10", "--mode", "crop", "--out", str(out)]
    assert main([*args, "--overwrite"]) == 0
    assert nib.load(str(out)).shape == nib.load(str(MR)).shape  # an uncompressed NIfTI, as the ending says


def test_predict_uses_the_cores_spacing_unless_given(core_path, tmp_path):
    """A core stored with 3 mm predicts at 3 mm by default; --spacing overrides the stored value."""
    from adapt3d.cores.preprocessing import Preprocessing

    core = load_core("sam-med3d", core_path)
    core.preprocessing = Preprocessing(core.image_size, (3.0, 3.0, 3.0), "sam-med3d")
    core3 = save_core(core, tmp_path / "core3.pth")

    def predict(core_file, name, *extra):
        args = ["predict", "--core", str(core_file), "--image", str(MR), "--point", "60,40,10", "--mode", "crop", *extra]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        return np.asarray(nib.load(str(tmp_path / name)).dataobj)

    at3 = predict(core3, "a.nii.gz")
    assert np.array_equal(at3, predict(core_path, "b.nii.gz", "--spacing", "3"))
    assert not np.array_equal(at3, predict(core_path, "c.nii.gz"))  # the tiny core's own 1.5 mm
    assert not np.array_equal(at3, predict(core3, "d.nii.gz", "--spacing", "1.5"))


def test_predict_refuses_first_click_negative(core_path):
    from adapt3d.errors import InputError
    from adapt3d.infer.predictor import CropPredictor

    vol = Volume(np.zeros((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(InputError, match="first point must be positive"):
        CropPredictor(load_core("sam-med3d", core_path)).predict(vol, "MR", [(1, 1, 1)], [0])


def test_predict_with_an_adapter(core_path, tmp_path):
    from adapt3d.tuners import AdapterConfig, add_adapters, save_adapter

    model = nudge_trainable(add_adapters(load_core("sam-med3d", core_path), AdapterConfig(rank=4), verbose=False), 0.5)
    save_adapter(model, tmp_path / "adapter")
    args = ["predict", "--core", str(core_path), "--image", str(MR), "--point", "60,40,10", "--mode", "crop"]
    assert main([*args, "--out", str(tmp_path / "plain.nii.gz")]) == 0
    assert main([*args, "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "adapted.nii.gz")]) == 0
    plain, adapted = (np.asarray(nib.load(str(tmp_path / n)).dataobj) for n in ("plain.nii.gz", "adapted.nii.gz"))
    assert plain.shape == adapted.shape and not np.array_equal(plain, adapted)
