"""Keyframe pseudo-labelling: sparse labels, ignore band, backends, QC and ``adapt3d pseudolabel``."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import SAMPLE_DATA, TINY_SAM, randomise

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.data.imageio import Volume, load_volume
from adapt3d.data.nnunet import read_dataset
from adapt3d.errors import ConfigError, InputError
from adapt3d.pseudolabel import (
    IGNORE,
    PSEUDOLABEL_BACKENDS,
    Backend,
    Resources,
    SparseLabel,
    auto_axis,
    backend_options,
    fuse,
    leave_keyframes_out,
    propagate,
    select_keyframes,
    sparse_from_ignore,
    sparsify,
)
from adapt3d.pseudolabel.seggpt import foreground_score
from adapt3d.tuners import AdapterConfig, add_adapters, save_adapter

CORD = SAMPLE_DATA / "Dataset003_SpinalCordMR"


def _oracle(image, sparse, classes, *, truth, false_positives=None):
    """Test-only backend: the ground truth itself (plus optional certain false positives)."""
    out = {name: (truth == cid).astype(np.float32) for name, cid in classes.items()}
    if false_positives is not None:
        for prob in out.values():
            prob[false_positives] = 1.0
    return out


def _half(image, sparse, classes, *, truth):
    """Test-only backend: probability 0.5 on the true object, 0 elsewhere (all uncertain)."""
    return {name: (truth == cid).astype(np.float32) * 0.5 for name, cid in classes.items()}


PSEUDOLABEL_BACKENDS.register("test-oracle", Backend(_oracle))
PSEUDOLABEL_BACKENDS.register("test-half", Backend(_half))


@pytest.fixture(scope="module")
def tiny_core():
    return randomise(load_core("sam-med3d", **TINY_SAM), seed=11)


@pytest.fixture(scope="module")
def cord():
    image = load_volume(CORD / "imagesTr" / "sct_t2w_0000.nii.gz")
    label = load_volume(CORD / "labelsTr" / "sct_t2w.nii.gz", kind="label")
    return image, label.array


# -- keyframes and the sparse representation --------------------------------------------------
def test_keyframe_selection_is_exact():
    assert select_keyframes(10, every=3) == (0, 3, 6, 9)
    assert select_keyframes(12, every=3) == (1, 4, 7, 10)  # centred: 1 slice before, 1 after
    assert select_keyframes(55, every=5) == (2, 7, 12, 17, 22, 27, 32, 37, 42, 47, 52)
    assert select_keyframes(20, count=2, span=(4, 13)) == (6, 11)  # centres of two 5-slice bins
    assert select_keyframes(9, count=1) == (4,)
    assert select_keyframes(20, count=9, span=(3, 5)) == (3, 4, 5)
    with pytest.raises(ConfigError, match="exactly one"):
        select_keyframes(10, every=2, count=2)
    with pytest.raises(ConfigError, match="at least 2"):
        select_keyframes(10, every=1)


def test_auto_axis_prefers_thick_slices_then_fewest():
    assert auto_axis((256, 256, 25), (0.78, 0.78, 6.5)) == 2
    assert auto_axis((20, 30, 40), (3.0, 1.0, 1.0)) == 0
    assert auto_axis((60, 55, 52), (1.0, 1.0, 1.0)) == 2
    assert auto_axis((30, 20, 20), (1.0, 1.0, 1.0)) == 2  # tie on fewest → last axis
    assert auto_axis((40, 40, 10), (1.0, 1.05, 1.0)) == 2  # within 10%: isotropic


def test_sparsify_keeps_keyframes_and_round_trips_through_ignore():
    label = np.zeros((4, 5, 6), np.int16)
    label[1:3, 1:4, 1:5] = 1
    label[0, 0, :] = 2
    sparse = sparsify(label, axis=2, every=2)
    assert sparse.keyframes == (0, 2, 4)
    expected = np.zeros_like(label)
    expected[:, :, [0, 2, 4]] = label[:, :, [0, 2, 4]]
    assert np.array_equal(sparse.label, expected)
    assert np.array_equal(sparse.known, np.broadcast_to(np.isin(np.arange(6), [0, 2, 4]), label.shape))
    on_disk = sparse.to_ignore()
    assert on_disk.dtype == np.uint8
    assert np.array_equal(on_disk[:, :, [1, 3, 5]], np.full((4, 5, 3), IGNORE))
    assert np.array_equal(on_disk[:, :, [0, 2, 4]], label[:, :, [0, 2, 4]])
    back = sparse_from_ignore(on_disk)
    assert (back.axis, back.keyframes) == (2, (0, 2, 4))
    assert np.array_equal(back.label, sparse.label)
    # count mode spreads the keyframes over the foreground slices (axis 0: slices 0..2)
    assert sparsify(label, axis=0, count=2).keyframes == (0, 2)


def test_sparse_from_ignore_rejects_what_is_not_keyframes():
    full = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputError, match="full label"):
        sparse_from_ignore(full, where="x.nii.gz")
    with pytest.raises(InputError, match="every voxel"):
        sparse_from_ignore(full + IGNORE)
    partial = np.full((4, 4, 4), IGNORE, np.uint8)
    partial[1, :2, :] = 0  # half a slice annotated
    with pytest.raises(InputError, match="x.nii.gz: labelled voxels do not form whole slices"):
        sparse_from_ignore(partial, where="x.nii.gz")
    partial[1] = 0
    with pytest.raises(InputError, match="along axis 2"):
        sparse_from_ignore(partial, axis=2)


# -- confidence → ignore --------------------------------------------------------------------
def test_ignore_band_single_class():
    p = np.array([0.0, 0.3, 0.31, 0.5, 0.69, 0.7, 1.0, 0.5], np.float32).reshape(8, 1, 1) * np.ones((8, 1, 2), np.float32)
    label = np.zeros((8, 1, 2), np.int16)
    label[7] = 1
    sparse = SparseLabel(label, axis=0, keyframes=(7,))  # the last slice is a keyframe (label 1, prob 0.5)
    out = fuse({"a": p}, {"a": 1}, sparse, band=(0.3, 0.7))
    assert out[:, 0, 0].tolist() == [0, 0, 255, 255, 255, 1, 1, 1]
    hard = fuse({"a": p}, {"a": 1}, sparse, band=(0.5, 0.5))
    assert hard[:, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ConfigError, match="uncertain band"):
        fuse({"a": p}, {"a": 1}, sparse, band=(0.6, 0.8))


def test_ignore_band_multi_class_argmax():
    pairs = [(0.8, 0.1), (0.45, 0.45), (0.2, 0.25), (0.6, 0.65), (0.75, 0.72), (0.1, 0.9)]
    a = np.array([x for x, _ in pairs], np.float32).reshape(-1, 1, 1)
    b = np.array([y for _, y in pairs], np.float32).reshape(-1, 1, 1)
    sparse = SparseLabel(np.zeros((len(pairs), 1, 2), np.int16), axis=2, keyframes=(1,))
    out = fuse({"a": a * np.ones((1, 1, 2)), "b": b * np.ones((1, 1, 2))}, {"a": 1, "b": 3}, sparse)
    assert out[:, 0, 0].tolist() == [1, 255, 0, 255, 1, 3]
    assert not out[:, 0, 1].any()


# -- backends --------------------------------------------------------------------------------
def test_nearest_backend_copies_nearest_keyframe_and_halves_ties():
    label = np.zeros((3, 3, 7), np.int16)
    label[1, 1, 1] = 1  # keyframe 1: the centre voxel
    label[:, :, 5] = 1  # keyframe 5: the whole slice
    sparse = sparsify(label, axis=2, every=4)
    assert sparse.keyframes == (1, 5)
    image = Volume(np.zeros(label.shape, np.float32), np.eye(4))
    prob = propagate("nearest", image, sparse, {"x": 1})["x"]
    centre, ones = label[:, :, 1].astype(np.float32), np.ones((3, 3), np.float32)
    expected = np.stack([centre, centre, centre, (centre + ones) / 2, ones, ones, ones], axis=2)
    assert np.array_equal(prob, expected)


@pytest.fixture(scope="module")
def core_cord(tiny_core, cord):
    """The core backend's probabilities on sct_t2w, axial keyframes every 5 slices."""
    image, truth = cord
    sparse = sparsify(truth, axis=1, every=5)
    return sparse, propagate("core", image, sparse, {"spinal_cord": 1}, core=tiny_core)


def test_core_backend_on_real_mr(core_cord, cord):
    image, truth = cord
    sparse, probs = core_cord
    prob = probs["spinal_cord"]
    assert prob.dtype == np.float32 and prob.shape == image.shape
    frames = (slice(None), list(sparse.keyframes), slice(None))
    assert np.array_equal(prob[frames], (truth[frames] == 1).astype(np.float32))  # keyframes exact
    hidden = prob[:, [s for s in range(55) if s not in sparse.keyframes], :]
    assert 0.0 <= hidden.min() and hidden.max() <= 1.0 and 0 < hidden.min() + 1e-6 < hidden.max()


def test_core_backend_falls_back_to_one_crop_per_keyframe(tiny_core, cord):
    """At 1 mm the tiny core's crop spans slices c-16..c+15: keyframes 7 and 47 need a crop each."""
    image, truth = cord
    sparse = sparsify(truth, axis=1, every=40)
    assert sparse.keyframes == (7, 47)
    prob = propagate("core", image, sparse, {"spinal_cord": 1}, core=tiny_core, target_spacing=(1.0, 1.0, 1.0))["spinal_cord"]
    assert np.array_equal(prob[:, [7, 47], :], (truth[:, [7, 47], :] == 1).astype(np.float32))
    assert prob[:, 23:31, :].max() == 0  # covered by neither crop (a joint crop would centre on 27)
    assert prob[:, 8:23, :].max() > 0 and prob[:, 31:47, :].max() > 0


@pytest.fixture(scope="module")
def seggpt_dir(tmp_path_factory):
    from transformers import SegGptConfig, SegGptForImageSegmentation

    cfg = SegGptConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, image_size=(64, 32), patch_size=8,
        pretrain_image_size=32, decoder_hidden_size=8, merge_index=0, intermediate_hidden_state_indices=(0, 1), drop_path_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seggpt")
    SegGptForImageSegmentation(cfg).save_pretrained(path)
    return path


def test_seggpt_backend_with_tiny_random_model(seggpt_dir, cord):
    image, truth = cord
    sub = Volume(image.array[:, 20:31, :].copy(), image.affine)
    sparse = sparsify(truth[:, 20:31, :], axis=1, every=5)
    assert sparse.keyframes == (0, 5, 10)
    options = backend_options("seggpt", Resources(seggpt=seggpt_dir))
    prob = propagate("seggpt", sub, sparse, {"spinal_cord": 1}, **options)["spinal_cord"]
    assert prob.shape == sub.shape and prob.dtype == np.float32
    assert np.array_equal(prob[:, [0, 5, 10], :], (truth[:, [20, 25, 30], :] == 1).astype(np.float32))
    hidden = prob[:, [1, 2, 3, 4, 6, 7, 8, 9], :]
    assert 0.0 <= hidden.min() and hidden.max() <= 1.0 and hidden.max() > hidden.min()
    again = propagate("seggpt", sub, sparse, {"spinal_cord": 1}, **options)["spinal_cord"]
    assert np.array_equal(prob, again)


def test_seggpt_score_matches_processor_decision():
    from transformers import SegGptImageProcessor
    from transformers.models.seggpt.modeling_seggpt import SegGptImageSegmentationOutput

    processor = SegGptImageProcessor()
    pred = torch.randn(2, 3, 16, 8, generator=torch.Generator().manual_seed(0)) * 2
    score = foreground_score(pred, processor.image_mean, processor.image_std)
    decision = processor.post_process_semantic_segmentation(SegGptImageSegmentationOutput(pred_masks=pred), num_labels=1)
    assert score.shape == (2, 8, 8) and 0 <= score.min() and score.max() <= 1
    assert torch.equal(torch.stack(decision).bool(), score > 0.5)
    white = torch.stack([(torch.ones(8, 8) - m) / s for m, s in zip(processor.image_mean, processor.image_std)])[None]
    black = torch.stack([(torch.zeros(8, 8) - m) / s for m, s in zip(processor.image_mean, processor.image_std)])[None]
    assert torch.allclose(foreground_score(torch.cat([black, white], dim=2), processor.image_mean, processor.image_std), torch.ones(1, 8, 8))
    assert torch.allclose(foreground_score(torch.cat([white, black], dim=2), processor.image_mean, processor.image_std), torch.zeros(1, 8, 8))


def test_backend_resources_are_checked():
    with pytest.raises(ConfigError, match="needs --core"):
        backend_options("core", Resources())
    with pytest.raises(ConfigError, match="--seggpt is not used by the 'core'"):
        backend_options("core", Resources(seggpt="x"))
    with pytest.raises(ConfigError, match="unknown pseudo-label backend 'segpt'"):
        backend_options("segpt", Resources())


# -- quality control ------------------------------------------------------------------------
def test_qc_known_answers():
    truth = np.zeros((6, 6, 10), np.int16)
    truth[1:5, 1:5, :] = 1  # 16 voxels per slice
    image = Volume(np.zeros(truth.shape, np.float32), np.eye(4))
    _, report = leave_keyframes_out(image, truth, {"x": 1, "absent": 2}, backend="test-oracle", axis=2, every=3, truth=truth)
    assert report["keyframes"] == [0, 3, 6, 9]
    assert report["classes"] == {"x": {"dice": 1.0, "dice_all": 1.0, "ignored_fraction": 0.0, "hidden_voxels": 96}}
    # 8 certain false positives on hidden slice 1 → Dice 2*96 / (2*96 + 8); a keyframe FP is pinned away
    fp = np.zeros(truth.shape, bool)
    fp[5, :, 1] = True
    fp[5, 0:2, 2] = True
    fp[5, :, 3] = True
    _, report = leave_keyframes_out(image, truth, {"x": 1}, backend="test-oracle", axis=2, every=3, truth=truth, false_positives=fp)
    assert report["classes"]["x"]["dice"] == pytest.approx(192 / 200)
    # probability 0.5 on the object's hidden voxels → all ignored: nothing to score, fraction 1
    pseudo, report = leave_keyframes_out(image, truth, {"x": 1}, backend="test-half", axis=2, every=3, truth=truth)
    assert report["classes"]["x"] == {"dice": None, "dice_all": 0.0, "ignored_fraction": 1.0, "hidden_voxels": 96}
    assert report["ignored_fraction"] == pytest.approx(96 / (36 * 6))
    assert np.array_equal(pseudo[:, :, [0, 3, 6, 9]], truth[:, :, [0, 3, 6, 9]])


def test_real_mr_qc_nearest_and_tiny_core(tiny_core, cord, core_cord):
    """Spinal cord T2w (manual mask), axial keyframes every 5 slices: the numbers quoted in the notes."""
    image, truth = cord
    _, near = leave_keyframes_out(image, truth, {"spinal_cord": 1}, backend="nearest", axis=1, every=5)
    pseudo, core = leave_keyframes_out(image, truth, {"spinal_cord": 1}, backend="core", axis=1, every=5, core=tiny_core)
    sparse, probs = core_cord
    assert np.array_equal(pseudo, fuse(probs, {"spinal_cord": 1}, sparse))  # same core, same keyframes: deterministic
    # independent check of the nearest-keyframe Dice: slices 1-2 after a keyframe copy it, 3-4 the next
    frames = select_keyframes(55, every=5)
    hidden = [s for s in range(55) if s not in frames]
    copied = np.stack([truth[:, min(frames, key=lambda k: (abs(k - s), k)), :] for s in hidden], axis=1) == 1
    gt = truth[:, hidden, :] == 1
    expected = 2 * np.count_nonzero(copied & gt) / (np.count_nonzero(copied) + np.count_nonzero(gt))
    assert near["classes"]["spinal_cord"]["dice"] == pytest.approx(expected, abs=1e-12)
    assert near["classes"]["spinal_cord"]["dice"] == pytest.approx(0.9814, abs=1e-4)
    print(f"\nQC sct_t2w every 5 (axis 1): nearest Dice {near['classes']['spinal_cord']['dice']:.4f}; "
          f"tiny random core Dice(all) {core['classes']['spinal_cord']['dice_all']:.4f}, "
          f"ignored {core['ignored_fraction']:.3f}")  # fmt: skip
    assert core["classes"]["spinal_cord"]["dice_all"] < near["classes"]["spinal_cord"]["dice"]


# -- the command ---------------------------------------------------------------------------
def test_cli_writes_nnunet_dataset_with_ignore(nnunet_dataset, tmp_path):
    # case_b becomes a user's sparse annotation: slices 1 and 5 along axis 0 labelled, the rest 255
    path_b = nnunet_dataset / "labelsTr" / "case_b.nii.gz"
    img_b = nib.load(str(path_b))
    full_b = np.asarray(img_b.dataobj)
    sparse_b = np.full(full_b.shape, IGNORE, np.uint8)
    sparse_b[[1, 5]] = full_b[[1, 5]]
    nib.save(nib.Nifti1Image(sparse_b, img_b.affine), str(path_b))
    out = tmp_path / "Dataset901_Pseudo"
    rc = main(["pseudolabel", "--data", str(nnunet_dataset), "--every", "3", "--backend", "nearest", "--out", str(out)])
    assert rc == 0
    ds = read_dataset(out)
    assert ds.info["labels"] == {"background": 0, "liver": 1, "tumour": 2, "ignore": 255}
    assert ds.info["numTraining"] == 2 and [c.case_id for c in ds.cases] == ["case_a", "case_b"]
    for case in ds.cases:
        assert (out / "imagesTr" / case.image_path.name).read_bytes() == (nnunet_dataset / "imagesTr" / case.image_path.name).read_bytes()
        label = nib.load(str(case.label_path))
        assert label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2, 255}
    written_b = np.asarray(nib.load(str(out / "labelsTr" / "case_b.nii.gz")).dataobj)
    assert np.array_equal(written_b[[1, 5]], full_b[[1, 5]])
    qc = json.loads((out / "qc.json").read_text())
    assert qc["sparse_cases"] == ["case_b"] and list(qc["cases"]) == ["case_a"]
    assert qc["cases"]["case_a"]["axis"] == 2 and qc["cases"]["case_a"]["keyframes"] == [0, 3, 6, 9]
    assert qc["settings"]["backend"] == "nearest" and qc["settings"]["every"] == 3
    card = (out / "PSEUDOLABELS.md").read_text()
    assert "pseudo-label (silver standard)" in card and "`nearest`" in card and "every 3 slices" in card


def test_cli_core_backend_and_next_ignore_id(nnunet_dataset, tmp_path, tiny_core):
    core_path = save_core(tiny_core, tmp_path / "tiny.pth")
    adapted = add_adapters(load_core("sam-med3d", core_path), AdapterConfig(method="lora", rank=2), verbose=False)
    adapter = save_adapter(adapted, tmp_path / "lora")
    out = tmp_path / "Dataset902_Pseudo"
    args = ["pseudolabel", "--data", str(nnunet_dataset), "--keyframes", "2", "--axis", "0", "--core", str(core_path)]
    args += ["--adapter", str(adapter)]
    assert main([*args, "--ignore-id", "next", "--out", str(out)]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["labels"]["ignore"] == 3
    for name in ("case_a", "case_b"):
        values = set(np.unique(np.asarray(nib.load(str(out / "labelsTr" / f"{name}.nii.gz")).dataobj)).tolist())
        assert values <= {0, 1, 2, 3}


@pytest.mark.parametrize(
    "extra,code,message",
    [
        (["--backend", "core"], 2, "needs --core"),
        (["--backend", "nearest", "--core", "x.pth"], 2, "--core is not used by the 'nearest'"),
        (["--backend", "nearest", "--uncertain", "0.6,0.8"], 2, "uncertain band"),
        (["--backend", "nearest", "--ignore-id", "2"], 2, "ignore id 2 must be above"),
        (["--backend", "nearest", "--broken-label"], 3, "label ids [7] are not declared"),
    ],
)
def test_cli_bad_input_writes_nothing(nnunet_dataset, tmp_path, capsys, extra, code, message):
    if "--broken-label" in extra:  # the second case fails after the first was written into the temp folder
        extra = extra[:-1]
        path = nnunet_dataset / "labelsTr" / "case_b.nii.gz"
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.where(np.asarray(img.dataobj) > 0, 7, 0).astype(np.uint8), img.affine), str(path))
    out = tmp_path / "out" / "Dataset903_Pseudo"
    rc = main(["pseudolabel", "--data", str(nnunet_dataset), "--every", "2", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == code and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_cli_refuses_existing_output(nnunet_dataset, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["pseudolabel", "--data", str(nnunet_dataset), "--every", "2", "--backend", "nearest", "--out", str(out)])
    assert rc == 5 and "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    shutil.rmtree(out)
