"""SIMULATED ultrasound renderer: geometry, determinism, speckle, shadows, attenuation, files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adapt3d.cli import main
from adapt3d.data.imageio import Volume, load_volume
from adapt3d.data.simulate_us import (
    UltrasoundParams,
    fan_mask,
    label_cut_fractions,
    simulate_ultrasound,
)
from adapt3d.data.simulate_us_files import simulate_us_dataset, simulate_us_files
from adapt3d.errors import ConfigError, InputError

SPINE = "Dataset003_SpinalCordMR"


def spine_case(sample_data: Path, case: str = "sct_t1w") -> tuple[Volume, Volume]:
    root = sample_data / SPINE
    return load_volume(root / "imagesTr" / f"{case}_0000.nii.gz"), load_volume(root / "labelsTr" / f"{case}.nii.gz", kind="label")


def phantom(shape: tuple[int, int, int], noise: float = 1.0) -> np.ndarray:
    """Homogeneous tissue (100 +- noise) with 3 voxels of air (0) on the low-k face, where a "+k" probe sits."""
    array = np.full(shape, 100.0, np.float32) + np.random.default_rng(7).normal(0.0, noise, shape).astype(np.float32)
    array[:, :, :3] = 0.0
    return array


def render(array: np.ndarray, affine: np.ndarray | None = None, seed: int = 0, **params) -> np.ndarray:
    vol = Volume(array, np.eye(4) if affine is None else affine)
    return simulate_ultrasound(vol, seed=seed, params=UltrasoundParams(**{"probe_axis": "+k", **params}))[0].array


# ---------------------------------------------------------------- geometry


def test_fan_geometry_matches_hand_computed_angles_and_depth():
    # 41^3 voxels of 1 mm, probe "+k": apex at voxel (20, 20, -0.5); azimuth along i, elevation along j
    vol = Volume(np.zeros((41, 41, 41), np.float32), np.eye(4))
    fan = fan_mask(vol, UltrasoundParams(probe_axis="+k"))
    assert fan[20, 20, 10] and fan[20, 20, 40]  # on the axis; r = 40.5 mm = default depth (to the far face)
    assert fan[25, 20, 10] and not fan[28, 20, 10]  # azimuth atan(5/10.5) = 25.5 deg, atan(8/10.5) = 37.3 deg > 35
    assert fan[20, 27, 10] and not fan[20, 28, 10]  # elevation asin(7/12.62) = 33.7 deg, asin(8/13.20) = 37.3 deg
    assert fan[20, 20, 0]  # on the axis at r = 0.5 mm
    short = fan_mask(vol, UltrasoundParams(probe_axis="+k", depth_mm=30.0))
    assert short[20, 20, 29] and not short[20, 20, 30]  # r = 29.5 and 30.5 mm
    narrow = fan_mask(vol, UltrasoundParams(probe_axis="+k", angles_deg=(70.0, 40.0)))
    assert narrow[25, 20, 10] and not narrow[20, 27, 10]  # elevation 33.7 deg > 20 deg
    assert not fan[0, 0, 0] and not fan[0, 20, 5]  # beside the probe face: outside


def test_fan_uses_mm_not_voxels_on_anisotropic_grid():
    # 1 x 1 x 2 mm voxels, probe "+i": apex (-0.5, 20, 10); elevation along k counts 2 mm per voxel
    vol = Volume(np.zeros((41, 41, 21), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    fan = fan_mask(vol, UltrasoundParams(probe_axis="+i"))
    assert fan[24, 20, 17]  # y = 14 mm, z = 24.5 mm: asin(14 / 28.2) = 29.7 deg
    assert not fan[24, 20, 20]  # y = 20 mm: asin(20 / 31.6) = 39.2 deg (in voxels it would be 22 deg)


def test_probe_sides_follow_the_orientation():
    ras = Volume(np.zeros((20, 22, 24), np.float32), np.eye(4))
    lps = Volume(np.zeros((20, 22, 24), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    mask = lambda vol, axis: fan_mask(vol, UltrasoundParams(probe_axis=axis))
    assert np.array_equal(mask(ras, "A"), mask(ras, "-j"))  # anterior = high j in RAS
    assert np.array_equal(mask(ras, "I"), mask(ras, "+k"))
    assert np.array_equal(mask(lps, "A"), mask(lps, "+j"))  # anterior = low j in LPS
    assert not np.array_equal(mask(ras, "-j"), mask(ras, "+j"))
    assert mask(ras, "A")[10, 15, 12] and not mask(ras, "A")[10, 2, 0]  # apex at voxel (9.5, 21.5, 11.5)


def test_output_zero_exactly_outside_fan_and_label_aligned(sample_data):
    image, label = spine_case(sample_data)
    params = UltrasoundParams()
    us, cut = simulate_ultrasound(image, label, seed=3, params=params)
    fan = fan_mask(image, params)
    assert 0.3 < fan.mean() < 0.9
    assert us.shape == image.shape and np.array_equal(us.affine, image.affine)
    assert us.array.dtype == np.float32
    assert np.all(us.array[~fan] == 0) and us.array[fan].min() >= 1.0 and us.array.max() <= 255.0
    assert cut is not None and cut.shape == label.shape and np.array_equal(cut.affine, label.affine)
    assert np.array_equal(cut.array[fan], label.array[fan]) and not cut.array[~fan].any()
    outside = np.count_nonzero(label.array[~fan] == 1)
    assert 0 < outside < np.count_nonzero(label.array == 1)  # the default fan cuts part of the cord
    assert label_cut_fractions(label.array, cut.array) == {1: round(outside / np.count_nonzero(label.array == 1), 6)}


def test_same_seed_bit_identical_other_seed_differs(sample_data):
    image, label = spine_case(sample_data, "sct_t2w")
    first, lab1 = simulate_ultrasound(image, label, seed=5)
    again, lab2 = simulate_ultrasound(image, label, seed=5)
    other, lab3 = simulate_ultrasound(image, label, seed=6)
    assert np.array_equal(first.array, again.array) and np.array_equal(lab1.array, lab2.array)
    fan = first.array > 0
    assert np.array_equal(fan, other.array > 0) and np.array_equal(lab1.array, lab3.array)
    unclipped = fan & (first.array > 1) & (first.array < 255)  # grey levels not saturated by the display
    assert unclipped.sum() > 0.5 * fan.sum()
    assert np.mean(first.array[unclipped] != other.array[unclipped]) > 0.99
    assert np.abs(first.array - other.array)[unclipped].mean() > 10.0


def test_label_grid_mismatch_is_refused(sample_data):
    image, _ = spine_case(sample_data, "sct_t1w")
    _, other = spine_case(sample_data, "sct_t2w")
    with pytest.raises(InputError, match="sct_t2w.nii.gz: grid differs"):
        simulate_ultrasound(image, other)


# ---------------------------------------------------------------- image formation


def test_speckle_makes_homogeneous_tissue_grainy():
    array = phantom((64, 64, 64), noise=1.0)
    region = (slice(24, 40), slice(24, 40), slice(20, 40))
    cv = lambda a: float(a[region].std() / a[region].mean())
    assert cv(array) < 0.011
    speckled, smooth = render(array), render(array, speckle=0.0)
    assert cv(speckled) > 0.15  # fully developed speckle: ~5.6 dB sd, ~28 of 255 grey levels
    assert cv(smooth) < 0.06


def test_output_is_not_a_monotone_function_of_the_input(sample_data):
    image, _ = spine_case(sample_data)
    us, _ = simulate_ultrasound(image)
    fan = us.array > 0
    a, b = image.array[fan], us.array[fan]
    band = np.abs(a - np.median(a)) <= 0.02 * np.median(a)  # input nearly constant (+-2 %)
    assert band.sum() > 1000
    assert np.subtract(*np.percentile(b[band], [75, 25])) > 20.0  # the output spreads widely
    assert abs(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]) < 0.7


@pytest.mark.parametrize("slab_value", [400.0, 0.0], ids=["bright-bone-like", "dark-air-like"])
def test_shadow_behind_strong_reflector(slab_value):
    array = phantom((64, 32, 64))
    array[:30, :, 20:24] = slab_value  # slab covering the low-i half of the fan at 20-24 mm depth
    behind, beside = (slice(12, 24), slice(12, 20), slice(30, 45)), (slice(40, 52), slice(12, 20), slice(30, 45))
    out = render(array)
    assert out[behind].mean() < 0.1 * out[beside].mean()  # mirror-image regions, same depths
    assert out[beside].mean() > 60
    no_shadow = render(array, shadowing=False)
    assert no_shadow[behind].mean() > 0.7 * no_shadow[beside].mean()
    plain = render(phantom((64, 32, 64)))
    assert plain[behind].mean() > 0.7 * plain[beside].mean()
    front = (slice(12, 24), slice(12, 20), slice(19, 21))
    fan = out[front] > 0
    assert out[front][fan].mean() > 1.5 * plain[front][fan].mean()  # the slab's surface echoes brightly


@pytest.mark.parametrize(("tgc", "db_cm_mhz", "mhz"), [(0.0, 0.5, 3.5), (0.5, 1.0, 2.0), (1.0, 0.5, 3.5)])
def test_depth_attenuation_and_time_gain_compensation(tgc, db_cm_mhz, mhz):
    out = render(phantom((24, 24, 100)), speckle=0.0, tgc=tgc, attenuation_db_cm_mhz=db_cm_mhz, frequency_mhz=mhz)
    profile = out[10:14, 10:14].mean(axis=(0, 1))
    slope = np.polyfit(np.arange(20, 90) + 0.5, profile[20:90], 1)[0]  # grey levels per mm
    expected = -(1 - tgc) * db_cm_mhz * mhz * 2 / 10 * 255 / 50  # round trip dB/mm on a 50 dB display
    assert slope == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"probe_axis": "x"}, "probe_axis"),
        ({"angles_deg": (70.0, 190.0)}, "angles_deg"),
        ({"tgc": 1.5}, "tgc: 1.5 must be in [0, 1]"),
        ({"depth_mm": 0.0}, "depth_mm: 0.0 must be > 0"),
        ({"percentiles": (99.0, 1.0)}, "percentiles"),
    ],
)
def test_bad_parameters_raise_config_error(params, text):
    with pytest.raises(ConfigError, match=text.replace("[", r"\[").replace("]", r"\]")):
        UltrasoundParams(**params)


# ---------------------------------------------------------------- files and CLI


def test_cli_writes_simulated_nnunet_case(sample_data, tmp_path, capsys):
    root = sample_data / SPINE
    image_path, label_path = root / "imagesTr" / "sct_t1w_0000.nii.gz", root / "labelsTr" / "sct_t1w.nii.gz"
    out = tmp_path / "simUS"
    assert main(["simulate-us", str(image_path), "--label", str(label_path), "--out", str(out), "--seed", "4"]) == 0
    assert "SIMULATED" in capsys.readouterr().out
    img, lab = nib.load(out / "imagesTr" / "sct_t1w_0000.nii.gz"), nib.load(out / "labelsTr" / "sct_t1w.nii.gz")
    source = nib.load(image_path)
    assert np.allclose(img.affine, source.affine) and np.allclose(lab.affine, source.affine) and img.shape == source.shape
    expected, expected_label = simulate_ultrasound(*spine_case(sample_data), seed=4)
    assert np.array_equal(np.asarray(img.dataobj), expected.array)
    assert np.array_equal(np.asarray(lab.dataobj), expected_label.array)
    info = json.loads((out / "dataset.json").read_text())
    assert info["description"].startswith("SIMULATED ultrasound")
    assert info["channel_names"] == {"0": "US"} and info["labels"] == {"background": 0, "spinal_cord": 1}
    assert info["numTraining"] == 1 and info["file_ending"] == ".nii.gz" and "MIT" in info["licence"]
    note = (out / "SIMULATED.md").read_text()
    assert "not real ultrasound" in note and str(image_path) in note and "| 4 |" in note and '"spinal_cord": 0.' in note
    assert sorted(p.name for p in out.iterdir()) == ["SIMULATED.md", "dataset.json", "imagesTr", "labelsTr"]


def test_dataset_conversion_seeds_each_case(sample_data, tmp_path):
    result = simulate_us_dataset(sample_data / SPINE, tmp_path / "sim", seed=10)
    assert [(c["case"], c["seed"]) for c in result["cases"]] == [("sct_t1w", 10), ("sct_t2w", 11)]
    info = json.loads((tmp_path / "sim" / "dataset.json").read_text())
    assert info["numTraining"] == 2 and info["description"].startswith("SIMULATED ultrasound")
    t2w = nib.load(tmp_path / "sim" / "imagesTr" / "sct_t2w_0000.nii.gz")
    assert np.array_equal(np.asarray(t2w.dataobj), simulate_ultrasound(spine_case(sample_data, "sct_t2w")[0], seed=11)[0].array)
    subset = simulate_us_dataset(sample_data / SPINE, tmp_path / "one", seed=10, cases=["sct_t2w"])
    assert subset["cases"][0]["seed"] == 11  # the same seed as in the full conversion
    assert main(["simulate-us", "--dataset", str(sample_data / SPINE), "--out", str(tmp_path / "cli"), "--cases", "sct_t1w"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli" / "imagesTr").iterdir()) == ["sct_t1w_0000.nii.gz"]


def test_unlabelled_input_gets_background_only(tmp_path, write_nifti):
    src = write_nifti(tmp_path / "in" / "vol.nii.gz", phantom((20, 20, 20)))
    assert main(["simulate-us", str(src), "--out", str(tmp_path / "o"), "--probe-axis", "+k"]) == 0
    info = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert info["labels"] == {"background": 0} and not (tmp_path / "o" / "labelsTr").exists()
    assert (tmp_path / "o" / "imagesTr" / "vol_0000.nii.gz").is_file()


def _bad_inputs(tmp: Path, write_nifti, sample_data: Path) -> dict[str, tuple[list[str], str]]:
    img = write_nifti(tmp / "img.nii.gz", phantom((20, 20, 20)))
    return {
        "missing": ([str(tmp / "nope.nii.gz")], "nope.nii.gz: file not found"),
        "2d": ([str(write_nifti(tmp / "flat.nii.gz", np.ones((20, 20), np.float32)))], "expected a 3D volume"),
        "4d": ([str(write_nifti(tmp / "4d.nii.gz", np.ones((8, 8, 8, 2), np.float32)))], "expected a 3D volume"),
        "grid": ([str(img), "--label", str(write_nifti(tmp / "lab.nii.gz", np.zeros((20, 20, 19), np.uint8)))], "lab.nii.gz: grid differs"),
        "both": ([str(img), "--dataset", str(sample_data / SPINE)], "exactly one"),
        "axis": ([str(img), "--probe-axis", "z"], "probe_axis"),
    }


@pytest.mark.parametrize("case", ["missing", "2d", "4d", "grid", "both", "axis"])
def test_cli_bad_input_one_line_nothing_written(case, tmp_path, write_nifti, sample_data, capsys):
    argv, text = _bad_inputs(tmp_path / "src", write_nifti, sample_data)[case]
    out = tmp_path / "deep" / "out"
    capsys.readouterr()
    rc = main(["simulate-us", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: ") and err.count("\n") == 1 and text in err
    assert not (tmp_path / "deep").exists()


def test_existing_output_refused_unless_overwrite(tmp_path, write_nifti, capsys):
    src = write_nifti(tmp_path / "vol.nii.gz", phantom((20, 20, 20)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["simulate-us", str(src), "--out", str(out)]) == 5
    assert "already exists" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["simulate-us", str(src), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["SIMULATED.md", "dataset.json", "imagesTr"]


@pytest.mark.parametrize(("ids", "expected"), [((1,), {"foreground": 1}), ((1, 3), {"class_1": 1, "class_3": 3})])
def test_labels_named_from_ids_without_source_dataset_json(ids, expected, tmp_path, write_nifti):
    label = np.zeros((20, 20, 20), np.uint8)
    for n, class_id in enumerate(ids):
        label[8 + 3 * n : 10 + 3 * n, 9:11, 8:14] = class_id  # near the axis of a "+k" fan
    src = write_nifti(tmp_path / "vol.nii.gz", phantom((20, 20, 20)))
    lab = write_nifti(tmp_path / "lab.nii.gz", label)
    result = simulate_us_files(src, lab, tmp_path / "o", params=UltrasoundParams(probe_axis="+k"))
    assert result["labels"] == {"background": 0, **expected}
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["labels"] == result["labels"]
    assert "unknown" in json.loads((tmp_path / "o" / "dataset.json").read_text())["licence"]


# ---------------------------------------------------------------- probe placement and file formats

ABDOMEN = "Dataset002_TotalSegExampleMR"


def test_default_probe_on_the_abdominal_mri_is_anterior(sample_data):
    """The embedded abdominal MRI is LPS (j runs anterior -> posterior): the fan's apex is on the low-j face."""
    image = load_volume(sample_data / ABDOMEN / "imagesTr" / "ts_mr_sm_0000.nii.gz")
    assert image.orientation == "LPS"
    fan = fan_mask(image, UltrasoundParams(angles_deg=(90.0, 90.0)))
    anterior, posterior = fan[:, :10].sum(), fan[:, -10:].sum()
    assert 0 < anterior < 0.2 * posterior  # narrow near the probe, wide at depth
    assert np.array_equal(fan, fan_mask(image, UltrasoundParams(probe_axis="auto", angles_deg=(90.0, 90.0))))
    back = fan_mask(image, UltrasoundParams(probe_axis="P", angles_deg=(90.0, 90.0)))
    assert back[:, -10:].sum() < 0.2 * back[:, :10].sum()


@pytest.mark.parametrize(
    ("dataset", "side", "why"),
    [(ABDOMEN, "A", "'abdominal' in the dataset name/description"), ("Dataset003_SpinalCordMR", "P", "every class is posterior"),
     ("Dataset004_BrainTumourMR", "S", "'brain'"), ("Dataset005_SpinePhantomUS", "P", "'spine'")],
)
def test_auto_probe_follows_the_datasets_anatomy(sample_data, dataset, side, why):
    from adapt3d.data.simulate_us_probe import auto_probe_side

    got, reason = auto_probe_side(json.loads((sample_data / dataset / "dataset.json").read_text()))
    assert got == side and why in reason
    assert auto_probe_side({}) == ("A", "auto: no anatomy named in dataset.json, anterior")


def test_cli_probe_option_places_the_fan_and_says_where(sample_data, tmp_path, capsys):
    src = sample_data / SPINE
    assert main(["simulate-us", "--dataset", str(src), "--cases", "sct_t1w", "--probe", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert "probe: posterior (auto: every class is posterior anatomy (spinal_cord))" in capsys.readouterr().out
    assert "Probe: posterior (auto:" in (tmp_path / "auto" / "SIMULATED.md").read_text()
    assert main(["simulate-us", "--dataset", str(src), "--cases", "sct_t1w", "--probe", "posterior", "--out", str(tmp_path / "p")]) == 0
    assert "probe: posterior (probe_axis 'P')" in capsys.readouterr().out
    auto, posterior = (load_volume(tmp_path / d / "imagesTr" / "sct_t1w_0000.nii.gz").array for d in ("auto", "p"))
    image = spine_case(sample_data)[0]
    assert np.array_equal(auto, posterior) and np.array_equal(posterior > 0, fan_mask(image, UltrasoundParams(probe_axis="P")))
    assert not np.array_equal(posterior > 0, fan_mask(image, UltrasoundParams()))  # the default, anterior


@pytest.mark.parametrize(("argv", "text"), [(["--probe", "front"], "--probe: 'front' is not one of anterior"),
                                            (["--probe", "left", "--probe-axis", "+i"], "--probe or --probe-axis, not both")])
def test_cli_bad_probe_one_line(argv, text, tmp_path, write_nifti, capsys):
    src = write_nifti(tmp_path / "vol.nii.gz", phantom((20, 20, 20)))
    assert main(["simulate-us", str(src), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err and not (tmp_path / "o").exists()


def test_nrrd_source_gives_an_nrrd_dataset_on_the_same_geometry(tmp_path):
    from adapt3d.data.imageio import save_volume

    affine = np.array([[0.0, 0.0, 1.2, 5.0], [-0.8, 0.0, 0.0, 3.0], [0.0, 1.0, 0.0, -2.0], [0, 0, 0, 1]])
    label = np.zeros((20, 20, 20), np.uint8)
    label[8:12, 8:12, 4:12] = 1
    src = save_volume(phantom((20, 20, 20)), affine, tmp_path / "in" / "vol_0000.nrrd")
    lab = save_volume(label, affine, tmp_path / "in" / "vol.nrrd")
    simulate_us_files(src, lab, tmp_path / "o", params=UltrasoundParams(probe_axis="+k"))
    info = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert info["file_ending"] == ".nrrd"
    us, cut = load_volume(tmp_path / "o" / "imagesTr" / "vol_0000.nrrd"), load_volume(tmp_path / "o" / "labelsTr" / "vol.nrrd", kind="label")
    assert np.array_equal(us.affine, load_volume(src).affine) and np.array_equal(cut.affine, us.affine)
    assert np.array_equal(us.array, simulate_ultrasound(load_volume(src), params=UltrasoundParams(probe_axis="+k"))[0].array)
