"""The CVPR 2025 challenge protocol: click simulation, metrics, npz converter, predict-npz loop."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny import TINY_SAM, randomise

from adapt3d.cli import main
from adapt3d.data.cvpr_npz import load_challenge_case, modality_of, nnunet_to_npz, npz_to_nnunet, read_npz
from adapt3d.errors import InputError
from adapt3d.evaluate.cvpr25 import auc, challenge_click, class_scores, dice_score, run_case, surface_dice
from adapt3d.evaluate.cvpr25_predict import NpzPredictor


def _cube(shape, lo, side) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, side if isinstance(side, tuple) else (side,) * 3))] = True
    return m


def _surfel_area_cube(n: int) -> float:
    """Marching-cubes surface of an n³ voxel cube at 1 mm: flat faces, 45° edge strips, corner triangles."""
    return 6 * (n - 1) ** 2 + 12 * (n - 1) * math.sqrt(0.5) + 8 * math.sqrt(3) / 8


# -- clicks ------------------------------------------------------------------------------------
def test_click_goes_to_the_centre_of_the_largest_error_and_its_kind_follows_the_ground_truth():
    shape = (20, 20, 20)
    gt = _cube(shape, (1, 1, 1), 3) | _cube(shape, (1, 12, 12), 2)  # two misses: 27 and 8 voxels
    pred = _cube(shape, (12, 2, 2), 4)  # a false positive of 64 voxels, far from both
    click = challenge_click(pred, gt)
    assert click is not None and not click.foreground  # over-segmentation → background click
    assert click.position in {(z, y, x) for z in (13, 14) for y in (3, 4) for x in (3, 4)}  # deepest 2×2×2 of the 4³ cube
    pred_small = _cube(shape, (12, 2, 2), 2)  # now the 27-voxel miss is the largest error
    click = challenge_click(pred_small, gt)
    assert click.foreground and click.position == (2, 2, 2)
    assert challenge_click(gt, gt) is None


def test_error_components_are_26_connected():
    shape = (16, 16, 16)
    gt = _cube(shape, (0, 0, 0), 3) | _cube(shape, (3, 3, 3), 3)  # 27 + 27 voxels touching at one corner only
    pred = gt | _cube(shape, (10, 10, 9), (3, 3, 4))  # a 36-voxel false positive
    pred[0:3, 0:3, 0:3] = False
    pred[3:6, 3:6, 3:6] = False  # both cubes missed: one 54-voxel component with 26-connectivity
    click = challenge_click(pred, gt)
    assert click.foreground  # 6-connectivity would have picked the 36-voxel false positive
    assert gt[click.position] and not pred[click.position]


def test_the_volume_border_counts_as_outside_for_the_click_depth():
    gt = np.ones((5, 5, 5), dtype=bool)  # the whole volume is missed: only the border bounds the error
    click = challenge_click(np.zeros_like(gt), gt)
    assert click.foreground and click.position == (2, 2, 2)


# -- metrics -----------------------------------------------------------------------------------
def test_dice_and_auc_match_hand_computations():
    shape = (8, 8, 8)
    assert dice_score(_cube(shape, (2, 0, 0), 4), _cube(shape, (0, 0, 0), 4)) == 0.5  # 32 shared of 64 + 64
    assert math.isnan(dice_score(np.zeros(shape, bool), np.zeros(shape, bool)))
    # last five steps 0.2, 0.4, 0.5, 0.7, 0.8: (0.2 + 0.8) / 2 + 0.4 + 0.5 + 0.7
    assert auc([0.1, 0.2, 0.4, 0.5, 0.7, 0.8]) == pytest.approx(2.1)


def test_nsd_weights_surface_elements_by_area():
    shape = (20, 20, 20)
    a, b = _cube(shape, (2, 2, 2), 4), _cube(shape, (12, 12, 12), 2)
    # pred misses cube b entirely (far beyond 2 mm): NSD = 2·S(a) / (2·S(a) + S(b)), S the surfel area
    expected = 2 * _surfel_area_cube(4) / (2 * _surfel_area_cube(4) + _surfel_area_cube(2))
    assert surface_dice(a, a | b, (1.0, 1.0, 1.0), 2.0) == pytest.approx(expected, abs=1e-6)
    assert surface_dice(a, a, (0.7, 1.0, 3.0), 2.0) == pytest.approx(1.0)
    assert surface_dice(np.zeros(shape, bool), a, (1.0, 1.0, 1.0), 2.0) == 0.0


def test_multiclass_scores_are_per_class_and_nsd_is_gated_by_dice():
    shape = (20, 20, 20)
    gts = np.zeros(shape, np.uint8)
    gts[_cube(shape, (1, 1, 1), 4)] = 1
    gts[_cube(shape, (10, 10, 10), 4)] = 2
    segs = np.zeros(shape, np.uint8)
    segs[_cube(shape, (1, 1, 1), 4)] = 1  # class 1 perfect, class 2 missed: mean Dice 0.5
    dices, nsds = class_scores(gts, segs, (1.0, 1.0, 1.0))
    assert dices == [1.0, 0.0] and nsds == pytest.approx([1.0, 0.0])
    segs[:] = 0
    segs[_cube(shape, (1, 1, 1), (1, 4, 4))] = 1  # a quarter of class 1 only: Dice 0.4 / 2 = 0.2 → NSD not computed
    dices, nsds = class_scores(gts, segs, (1.0, 1.0, 1.0))
    assert np.mean(dices) == pytest.approx(0.2) and nsds == [0.0, 0.0]


def test_the_loop_feeds_boxes_then_accumulated_clicks_and_never_labels():
    shape = (12, 12, 12)
    gts = np.zeros(shape, np.uint8)
    gts[_cube(shape, (3, 3, 3), 5)] = 1
    seen = []

    def empty(inputs):
        seen.append(dict(inputs))
        return np.zeros(shape, np.uint8)

    run = run_case(np.zeros(shape, np.uint8), (1.0, 1.0, 1.0), gts, [{"z_min": 3}], empty)
    assert [sorted(k) for k in seen[:2]] == [["boxes", "imgs", "spacing"], ["boxes", "clicks", "clicks_order", "imgs", "prev_pred", "spacing"]]
    assert len(seen) == 6 and run.dsc == [0.0] * 6 and run.summary()["DSC_AUC"] == 0.0
    assert run.clicks == [{"fg": [[5, 5, 5]] * 5, "bg": []}] and run.clicks_order == [["fg"] * 5]  # the same centre, as the script repeats it
    no_box = run_case(np.zeros(shape, np.uint8), (1.0, 1.0, 1.0), gts, None, empty)
    assert len(seen) == 11 and no_box.seconds[0] == 0.0  # without boxes step 1 is skipped and scored 0


# -- npz format and converter --------------------------------------------------------------------
def test_converter_round_trip_keeps_geometry_and_labels(sample_data, tmp_path):
    src = sample_data / "Dataset004_BrainTumourMR"  # LAS orientation, 0.78 × 0.78 × 6.5 mm
    npz_dir, back = tmp_path / "npz", tmp_path / "Dataset104_Back"
    nnunet_to_npz(src, npz_dir, labels_apart=True)
    image_nii = nib.load(str(next((src / "imagesTr").glob("*.nii.gz"))))
    label_nii = nib.load(str(src / "labelsTr" / next((src / "labelsTr").glob("*.nii.gz")).name))
    name = next((npz_dir / "imgs").glob("*.npz")).stem
    assert modality_of(name) == "MR"
    case = load_challenge_case(npz_dir / "imgs" / f"{name}.npz", gts_dir=npz_dir / "gts")
    assert "gts" not in read_npz(npz_dir / "imgs" / f"{name}.npz", ("gts",))  # labels kept apart
    label = np.asarray(label_nii.dataobj)
    # LAS → LPS flips the second axis; the npz is (z, y, x) and its spacing (x, y, z)
    ids = [int(v) for v in np.unique(label) if v > 0]
    lps = label[:, ::-1, :].transpose(2, 1, 0)
    assert case.imgs.dtype == np.uint8 and case.imgs.shape == lps.shape
    assert case.spacing == pytest.approx(label_nii.header.get_zooms()[:3])
    for new, old in enumerate(ids, start=1):
        np.testing.assert_array_equal(case.gts == new, lps == old)
        box, (zs, ys, xs) = case.boxes[new - 1], np.nonzero(lps == old)
        assert (box["z_min"], box["z_max"]) == (zs.min(), zs.max())
        mid_y, mid_x = np.nonzero(lps[box["z_mid"]] == old)
        assert box["z_mid_x_min"] <= mid_x.min() and box["z_mid_x_max"] >= mid_x.max()
        assert box["z_mid_y_min"] <= mid_y.min() and box["z_mid_y_max"] >= mid_y.max()
    npz_to_nnunet(npz_dir, back)
    back_label = nib.load(str(next((back / "labelsTr").glob("*.nii.gz"))))
    np.testing.assert_array_equal(np.asarray(back_label.dataobj), label)
    np.testing.assert_allclose(back_label.affine, label_nii.affine, atol=1e-5)
    assert nib.load(str(next((back / "imagesTr").glob("*.nii.gz")))).shape == image_nii.shape
    assert json.loads((back / "dataset.json").read_text())["labels"] == json.loads((src / "dataset.json").read_text())["labels"]
    (npz_dir / "adapt3d_geometry.json").unlink()  # a challenge npz: no direction, no origin
    npz_to_nnunet(npz_dir, tmp_path / "Dataset105_Bare")
    bare = nib.load(str(next((tmp_path / "Dataset105_Bare" / "labelsTr").glob("*.nii.gz"))))
    assert nib.aff2axcodes(bare.affine) == ("L", "P", "S")
    assert np.linalg.norm(bare.affine[:3, :3], axis=0) == pytest.approx(label_nii.header.get_zooms()[:3])
    np.testing.assert_array_equal(np.asarray(bare.dataobj), case.gts.transpose(2, 1, 0))


def test_pickled_keys_are_read_without_running_code(tmp_path):
    path = tmp_path / "CT_x.npz"
    np.savez_compressed(path, imgs=np.zeros((2, 3, 4), np.uint8), spacing=np.ones(3), boxes=np.array([Fraction(1, 2)], dtype=object))
    with pytest.raises(InputError, match="CT_x.npz: refused"):
        load_challenge_case(path)


def test_box_fill_baseline_fills_the_box():
    box = {"z_min": 1, "z_max": 3, "z_mid": 2, "z_mid_x_min": 2, "z_mid_y_min": 0, "z_mid_x_max": 4, "z_mid_y_max": 1}
    segs = NpzPredictor(None, strategy="box-fill")({"imgs": np.zeros((5, 6, 7), np.uint8), "spacing": (1.0, 1.0, 1.0), "boxes": [box]})
    expected = np.zeros((5, 6, 7), np.uint8)
    expected[1:4, 0:2, 2:5] = 1
    np.testing.assert_array_equal(segs, expected)


# -- predict-npz: the challenge's 6 container runs -------------------------------------------------
@pytest.fixture
def tiny_core(tmp_path) -> Path:
    from adapt3d.cores import load_core, save_core

    return save_core(randomise(load_core("sam-med3d", **TINY_SAM)), tmp_path / "tiny.safetensors", fmt="safetensors")


def test_predict_npz_runs_the_six_challenge_steps(sample_data, tmp_path, tiny_core):
    npz_dir = tmp_path / "npz"
    nnunet_to_npz(sample_data / "Dataset002_TotalSegExampleMR", npz_dir, labels_apart=True)
    name = next((npz_dir / "imgs").glob("*.npz")).name
    case = load_challenge_case(npz_dir / "imgs" / name, gts_dir=npz_dir / "gts")
    gts, inputs, outputs = case.gts, tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    classes = [int(c) for c in np.unique(gts) if c]
    clicks, order = [{"fg": [], "bg": []} for _ in classes], [[] for _ in classes]
    segs = None
    for step in range(6):  # as CVPR25_iter_eval.py: rewrite the input with the clicks, run the container
        keys = {"imgs": case.imgs, "spacing": np.asarray(case.spacing), "boxes": np.array(case.boxes, dtype=object),
                "gts": np.zeros((2, 2, 2), np.uint8)}  # a label key a predictor must never read (wrong shape: it would fail)
        if step:
            for i, cls in enumerate(classes):
                click = challenge_click(segs == cls, gts == cls)
                kind = None if click is None else "fg" if click.foreground else "bg"
                if click is not None:
                    clicks[i][kind].append([np.int64(v) for v in click.position])
                order[i].append(kind)
            keys.update(clicks=np.array(clicks, dtype=object), clicks_order=np.array(order, dtype=object), prev_pred=segs)
        np.savez_compressed(inputs / name, **keys)
        assert main(["predict-npz", "--core", str(tiny_core), "--in", str(inputs), "--out", str(outputs), "--spacing", "3"]) == 0
        with np.load(outputs / name) as out:
            assert list(out.keys()) == ["segs"]
            segs = out["segs"]
        assert segs.dtype == np.uint8 and segs.shape == case.imgs.shape and set(np.unique(segs)) <= {0, *classes}
    assert all(len(o) == 5 for o in order)


def test_predict_npz_routes_adapters_by_the_file_name_prefix(sample_data, tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    npz_dir = tmp_path / "npz"
    nnunet_to_npz(sample_data / "Dataset002_TotalSegExampleMR", npz_dir)
    mr = next(npz_dir.glob("MR_*.npz"))
    (npz_dir / mr.name.replace("MR_", "CT_", 1)).write_bytes(mr.read_bytes())  # the same image, named as CT
    (npz_dir / "adapt3d_geometry.json").unlink()
    args = ["predict-npz", "--core", str(root / "datasets/sample/demo_core/demo_core.safetensors"), "--adapter",
            f"MR={root / 'adapters/demo-mri-lora'}", "--in", str(npz_dir), "--out", str(tmp_path / "out"), "--spacing", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(MR, adapter MR)" in printed and "(CT, frozen core)" in printed
    with np.load(tmp_path / "out" / mr.name) as a, np.load(tmp_path / "out" / mr.name.replace("MR_", "CT_", 1)) as b:
        assert not np.array_equal(a["segs"], b["segs"])  # the adapter changed the MR prediction only


def test_evaluate_protocol_cvpr25_writes_a_run_the_report_reads(sample_data, tmp_path, tiny_core):
    from adapt3d.report.runs import load_run
    from adapt3d.report.tables import cvpr25_table

    out = tmp_path / "run"
    assert main(["evaluate", "--protocol", "cvpr25", "--core", str(tiny_core), "--data", str(sample_data / "Dataset002_TotalSegExampleMR"),
                 "--classes", "spleen,liver", "--out", str(out), "--no-predictions"]) == 0
    run = load_run(out)  # validated against the run schema
    ev = run.domains[next(iter(run.domains))]["before"]
    assert run.metrics["protocol"] == "cvpr25" and ev["clicks"] == [1, 2, 3, 4, 5, 6]
    image = ev["images"][0]
    assert image["classes"] == ["spleen", "liver"] and sorted(image["time_s"]) == ["1", "2", "3", "4", "5", "6"]
    assert [len(r["clicks_order"]) for r in ev["per_case"]] == [5, 5]
    assert "box → clicks" in ev["prompt_strategy"]
    table = cvpr25_table(run)
    assert table.rows[0][:2] == ["TotalSegExampleMR", "before"] and "SAM-Med3D has no box embeddings" in table.caption


def test_predict_sh_is_the_container_entry_point(sample_data, tmp_path, tiny_core):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    nnunet_to_npz(sample_data / "Dataset002_TotalSegExampleMR", tmp_path / "inputs", labels_apart=True)
    env = {**os.environ, "PYTHON": sys.executable, "ADAPT3D_CORE": str(tiny_core), "ADAPT3D_SPACING": "3",
           "ADAPT3D_INPUTS": str(tmp_path / "inputs" / "imgs"), "ADAPT3D_OUTPUTS": str(tmp_path / "outputs")}
    done = subprocess.run(["sh", str(root / "predict.sh")], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    name = next((tmp_path / "inputs" / "imgs").glob("*.npz")).name
    with np.load(tmp_path / "outputs" / name) as out:
        assert out["segs"].shape == load_challenge_case(tmp_path / "inputs" / "imgs" / name, with_labels=False).imgs.shape


def test_segvol_takes_the_box_natively():
    from adapt3d.cores import load_core

    tiny = {"image_size": (8, 32, 32), "patch_size": (2, 8, 8), "embed_dim": 64, "depth": 2, "num_heads": 1, "mlp_dim": 128,
            "decoder_depth": 1, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32, "text_hidden_size": 32, "text_layers": 1,
            "text_heads": 1, "text_intermediate_size": 64, "text_max_positions": 24, "text_vocab_size": 64}
    predictor = NpzPredictor(randomise(load_core("segvol", **tiny)))
    box = {"z_min": 3, "z_max": 9, "z_mid": 6, "z_mid_x_min": 10, "z_mid_y_min": 12, "z_mid_x_max": 25, "z_mid_y_max": 30}
    imgs = np.random.default_rng(0).integers(0, 255, (12, 40, 36)).astype(np.uint8)
    inputs = {"imgs": imgs, "spacing": (1.0, 1.0, 2.0), "boxes": [box], "clicks": [{"fg": [[6, 20, 17]], "bg": [[6, 1, 1]]}],
              "clicks_order": [["fg", "bg"]]}
    segs = predictor(inputs, "MR")
    assert segs.shape == imgs.shape and segs.dtype == np.uint8 and set(np.unique(segs)) <= {0, 1}
    assert predictor.description.startswith("zoom: native 3D box")  # the strategy of SegVol's contract


def test_crop_sampling_matches_whole_volume_resampling():
    """The predictor samples one crop (and maps it back) instead of resampling the whole image; it must give
    what the N-click path's to_working_grid / from_working_grid give for the same volume."""
    from adapt3d.data.preprocess import centred_window, from_working_grid, to_working_grid
    from adapt3d.evaluate.cvpr25_predict import NpzGrid, npz_volume

    rng = np.random.default_rng(0)
    imgs, spacing = (rng.random((17, 40, 33)) * 255).astype(np.float32), (0.8, 1.1, 2.5)
    work, grid = to_working_grid(npz_volume(imgs, spacing), (1.5, 1.5, 1.5))
    g = NpzGrid.of(imgs.shape, spacing, (1.5, 1.5, 1.5))
    assert g.working_shape == work.shape
    for centre in [(8, 20, 16), (0, 0, 0), (16, 39, 32), (3, 35, 5)]:  # inside, and windows leaving the grid
        window = centred_window(g.to_working(centre), 16)
        np.testing.assert_allclose(g.crop(imgs, window.start, 16), window.extract(work), atol=1e-3)
        prob = rng.random((16, 16, 16)).astype(np.float32)
        expected = from_working_grid(window.paste(prob, work.shape), grid, order=1).transpose(2, 1, 0)
        region, values = g.paste(prob, window.start)
        got = np.zeros(imgs.shape, np.float32)
        got[region] = values
        np.testing.assert_allclose(got, expected, atol=1e-5)
