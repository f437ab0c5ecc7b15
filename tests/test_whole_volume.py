"""Whole-volume prediction: multi-window growth, prompt propagation, blending, resampling policy.

The machinery is tested with :class:`ThresholdOracle`, a deterministic stand-in core (a random
tiny core segments nothing meaningful): it segments the voxels of its window that are at least
halfway, in intensity, from the window's darkest voxel to the voxel of its first positive click.
So a window only comes out right if its (user or propagated) click lies in the object. The test
object is the real liver mask of the embedded TotalSegmentator CT, upsampled ×2 to 1.5 mm, drawn
bright (1000) on a dark (100) background; at a 3 mm working spacing it spans 68×62×43 voxels,
larger than the oracle's 32³ window (96 mm) on every axis.
"""

from __future__ import annotations

import inspect
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from tiny import SAMPLE_DATA, TINY_SAM, randomise
from torch import nn
from torch.nn import functional as F

from adapt3d import load_core
from adapt3d.cli import main
from adapt3d.cores import save_core
from adapt3d.cores.sam_med3d import SamMed3D
from adapt3d.data.imageio import Volume, load_volume
from adapt3d.data.preprocess import to_working_grid
from adapt3d.errors import ConfigError
from adapt3d.infer import CropPredictor, WholeVolumeConfig, WholeVolumePredictor, working_spacing
from adapt3d.infer.resampling_policy import ras_spacing
from adapt3d.infer.whole_volume import BLEND_WEIGHTS

CT_LABEL = SAMPLE_DATA / "Dataset001_TotalSegExampleCT" / "labelsTr" / "ts_ct.nii.gz"
BRAIN = SAMPLE_DATA / "Dataset004_BrainTumourMR" / "imagesTr" / "brain1_0000.nii.gz"
AT_3MM = {"spacing": 3.0, "max_windows": 200}


class ThresholdOracle(SamMed3D):
    """A SAM-Med3D-format stand-in: ``encode`` keeps the crop, ``decode`` thresholds it at the click.

    Logits are linear in the (2×2×2-averaged) intensity: +10 at the clicked intensity, -10 at the
    window's minimum, 0 halfway, so the upsampled boundary falls between voxels as a model's would.
    A window of uniform intensity is all object. Negative clicks and the mask prompt are ignored.
    A SamMed3D by type (so it has the sam-med3d contract), none of its layers.
    """

    image_size = low_res_size = 0  # set per instance (SamMed3D reads them from its config)

    def __init__(self, size: int = 32) -> None:
        nn.Module.__init__(self)
        self.image_size, self.low_res_size = size, size // 2
        self.gain = nn.Parameter(torch.tensor(10.0))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, embeddings, points, labels, mask_logits=None, multimask_output=False):
        crop = embeddings[0, 0]
        click = points[0][labels[0] == 1][0].long().clamp(0, self.image_size - 1)
        top, bottom = crop[tuple(click)], crop.min()
        low = F.avg_pool3d(embeddings, 2)
        if top - bottom < 1e-6:
            return torch.full_like(low, float(self.gain)), None
        return self.gain * (2 * (low - bottom) / (top - bottom) - 1), None


def oracle_run(image: Volume, clicks, labels, **config):
    """Whole-volume prediction with the 32³ oracle (MR: no CT clamp)."""
    return WholeVolumePredictor(ThresholdOracle(), WholeVolumeConfig(**config)).predict(image, "MR", clicks, labels)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def liver():
    """(image Volume, label array, first click): the real liver, upsampled, on a 1.5 mm RAS grid."""
    mask = load_volume(CT_LABEL, kind="label").array[30:112, 18:94, 62:112] == 5
    mask = np.pad(mask, ((0, 0), (0, 0), (0, 4)))  # the CT cuts the liver's dome: close it
    soft = np.clip(ndimage.zoom(mask.astype(np.float32), 2, order=1), 0, 1)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = (-100.0, 20.0, 30.0)
    label = soft > 0.5
    depth = ndimage.distance_transform_edt(label)
    click = tuple(int(c) for c in np.unravel_index(np.argmax(depth), depth.shape))
    return Volume((100 + 900 * soft).astype(np.float32), affine), label, click


@pytest.fixture(scope="module")
def whole(liver):
    image, _, click = liver
    return oracle_run(image, [click], [1], **AT_3MM)


def test_object_larger_than_the_crop_is_segmented_whole(liver, whole):
    image, label, click = liver
    work_label, _ = to_working_grid(Volume(label.astype(np.uint8), image.affine), (3.0, 3.0, 3.0), order=0)
    extent = np.ptp(np.argwhere(work_label), axis=0) + 1
    assert np.all(extent > 32), f"premise: the object ({extent}) is larger than the 32³ window"
    # one crop (the official inference) cuts it ...
    crop_mask = CropPredictor(ThresholdOracle(), target_spacing=(3.0, 3.0, 3.0)).predict(image, "MR", [click], [1])
    assert dice(crop_mask, label) < 0.65
    # ... whole-volume mode covers it: equal to the oracle run on one window holding everything,
    # and to the label up to the 3 mm working resolution
    uncut = WholeVolumePredictor(ThresholdOracle(128), WholeVolumeConfig(spacing=3.0, max_windows=1))
    reference = uncut.predict(image, "MR", [click], [1])
    assert reference.stopped == "complete" and len(reference.windows) == 1
    assert whole.stopped == "complete" and len(whole.windows) == 14
    assert dice(whole.mask, reference.mask) > 0.999
    assert dice(whole.mask, label) > 0.965
    assert whole.probability.shape == label.shape and whole.probability.dtype == np.float32


def test_propagated_clicks_lie_inside_the_object(liver, whole):
    image, label, _ = liver
    work_label, _ = to_working_grid(Volume(label.astype(np.uint8), image.affine), (3.0, 3.0, 3.0), order=0)
    propagated = [w for w in whole.windows if w.propagated]
    assert len(propagated) == len(whole.windows) - 1  # all but the first window
    for w in propagated:
        point = np.round(w.points[0]).astype(int)
        assert w.labels[0] == 1 and work_label[tuple(point)] == 1
        assert np.all(point - w.window.start >= 0) and np.all(point - w.window.start < 32)


def test_one_window_is_the_official_single_crop(liver):
    image, _, click = liver
    clicks, labels = [click, (click[0] + 4, click[1], click[2] + 2)], [1, 0]
    one = oracle_run(image, clicks, labels, spacing=3.0, max_windows=1)
    crop = CropPredictor(ThresholdOracle(), target_spacing=(3.0, 3.0, 3.0))
    prepared = crop.prepare(image, "MR", click)
    probability = crop.probability(prepared, crop.run_clicks(prepared, clicks, labels)[-1])
    assert np.allclose(one.probability, probability, atol=1e-6)
    assert np.array_equal(one.mask, (probability > 0.5).astype(np.uint8))
    assert one.stopped == "budget" and list(one.windows[0].labels) == [1, 0]


def test_budget_stops_growth_with_a_warning(liver, caplog):
    image, _, click = liver
    with caplog.at_level(logging.WARNING):
        result = oracle_run(image, [click], [1], spacing=3.0, max_windows=3)
    assert result.stopped == "budget" and len(result.windows) == 3
    assert "3-window budget" in caplog.text


def test_a_second_positive_click_outside_the_first_window_seeds_a_window(liver):
    image, label, click = liver
    depth = ndimage.distance_transform_edt(label)
    depth[tuple(slice(c - 40, c + 41) for c in click)] = 0  # 60 mm around the first click
    far = np.unravel_index(np.argmax(depth), depth.shape)
    result = oracle_run(image, [click, far], [1, 1], spacing=3.0, max_windows=2)
    second = result.windows[1]
    assert not second.propagated and list(second.labels) == [1]
    centre = np.floor(second.points[0] + 0.5).astype(int)
    assert np.array_equal(np.asarray(second.window.start) + 16, centre)  # centred on the click
    assert np.allclose(second.points[0], np.asarray(far) / 2)  # the click itself, at 3 mm


def test_lps_and_anisotropic_inputs_keep_their_grid(liver, whole):
    image, label, click = liver
    nx, ny, _ = image.shape
    lps_affine = image.affine @ np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    lps = Volume(np.ascontiguousarray(image.array[::-1, ::-1]), lps_affine)
    on_lps = oracle_run(lps, [(nx - 1 - click[0], ny - 1 - click[1], click[2])], [1], **AT_3MM)
    assert np.array_equal(on_lps.affine, lps_affine)
    assert np.array_equal(on_lps.probability[::-1, ::-1], whole.probability)  # same physical answer
    # 1.5 × 1.5 × 4.5 mm: every third slice
    thick = Volume(np.ascontiguousarray(image.array[:, :, ::3]), image.affine @ np.diag([1, 1, 3, 1.0]))
    for policy, working, shape in (("isotropic", (3.0, 3.0, 3.0), (82, 76, 54)), ("inplane", (3.0, 3.0, 4.5), (82, 76, 36))):
        result = oracle_run(thick, [(click[0], click[1], click[2] // 3)], [1], resample=policy, **AT_3MM)
        assert np.array_equal(result.affine, thick.affine) and result.mask.shape == thick.shape
        assert result.resampling.input_spacing == (1.5, 1.5, 4.5)
        assert result.resampling.working_spacing == working and result.resampling.working_shape == shape
        assert dice(result.mask, label[:, :, ::3]) > 0.97 and result.stopped == "complete"


def test_no_label_can_be_given(liver, whole):
    params = list(inspect.signature(WholeVolumePredictor.predict).parameters)
    assert params == ["self", "image", "modality", "points_ijk", "point_labels"]
    image, label, click = liver
    with pytest.raises(TypeError):
        WholeVolumePredictor(ThresholdOracle()).predict(image, "MR", [click], [1], label=np.zeros_like(label))
    again = oracle_run(image, [click], [1], **AT_3MM)
    assert np.array_equal(again.probability, whole.probability)  # deterministic


def test_resampling_policies_by_hand():
    # voxel axis i runs S (6.5 mm), j runs L (0.8 mm), k runs A (0.8 mm)
    affine = np.array([[0, -0.8, 0, 10], [0, 0, 0.8, -20], [6.5, 0, 0, 5], [0, 0, 0, 1.0]])
    assert ras_spacing(affine) == (0.8, 0.8, 6.5)
    assert working_spacing("isotropic", 1.5, affine) == (1.5, 1.5, 1.5)
    assert working_spacing("inplane", 1.5, affine) == (1.5, 1.5, 6.5)
    assert working_spacing("native", 1.5, affine) is None
    assert working_spacing("inplane", 2.0, np.eye(4)) == (2.0, 2.0, 1.0)  # ties keep the last (S) axis
    work, grid = to_working_grid(Volume(np.zeros((4, 30, 30), np.float32), affine), working_spacing("inplane", 1.5, affine))
    assert grid.spacing == (1.5, 1.5, 6.5) and work.shape == (16, 16, 4)
    with pytest.raises(ConfigError, match="unknown resampling policy 'isotropc'.*did you mean 'isotropic'"):
        working_spacing("isotropc", 1.5, affine)


def test_blend_weights_by_hand():
    g = BLEND_WEIGHTS.get("gaussian")(8)  # x = ±0.5 … ±3.5, σ = 1
    assert g[3, 3, 3] == g[4, 4, 4] == pytest.approx(np.exp(-3 * 0.125), rel=1e-6)
    assert g[0, 3, 4] == pytest.approx(np.exp(-3.5**2 / 2 - 2 * 0.125), rel=1e-6)
    assert np.array_equal(BLEND_WEIGHTS.get("constant")(4), np.ones((4, 4, 4), np.float32))


@pytest.mark.parametrize(
    "values,match",
    [
        ({"overlp": 0.5}, "unknown key 'overlp' \\(did you mean 'overlap'\\?\\)"),
        ({"overlap": 1.0}, "whole_volume.overlap: must be in \\[0, 1\\)"),
        ({"max_windows": 0}, "whole_volume.max_windows: must be a positive integer"),
        ({"spacing": -1}, "whole_volume.spacing: must be > 0"),
        ({"blend": "linear"}, "unknown blend mode 'linear'"),
        ({"resample": "iso"}, "unknown resampling policy 'iso'"),
    ],
)
def test_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        WholeVolumeConfig.from_mapping(values)


@pytest.fixture(scope="module")
def tiny_core():
    return randomise(load_core("sam-med3d", **TINY_SAM), seed=5).eval()


@pytest.mark.parametrize("policy,working", [("isotropic", (1.5, 1.5, 1.5)), ("inplane", (1.5, 1.5, 6.5))])
def test_tiny_sam_core_on_anisotropic_real_mri(tiny_core, policy, working):
    image = load_volume(BRAIN)  # 256×256×25, 0.78×0.78×6.5 mm, LAS
    config = WholeVolumeConfig(resample=policy, max_windows=4, overlap=0.5)
    runs = [WholeVolumePredictor(tiny_core, config).predict(image, "MR", [(185, 118, 14)], [1]) for _ in range(2)]
    result = runs[0]
    assert np.array_equal(result.probability, runs[1].probability)
    assert result.mask.shape == image.shape and np.array_equal(result.affine, image.affine)
    assert 1 <= len(result.windows) <= 4 and result.stopped in ("complete", "budget")
    assert 0 <= result.probability.min() and result.probability.max() <= 1
    assert result.resampling.input_spacing == (0.7812, 0.7812, 6.5) and result.resampling.working_spacing == working
    assert result.summary()["resampling"]["policy"] == policy


@pytest.fixture(scope="module")
def core_file(tiny_core, tmp_path_factory):
    return str(save_core(tiny_core, tmp_path_factory.mktemp("core") / "tiny.pth"))


def test_cli_modes(core_file, tmp_path, capsys):
    run = ["predict", "--core", core_file, "--image", str(BRAIN), "--point", "185,118,14", "--resample", "inplane"]
    assert main([*run, "--mode", "whole", "--max-windows", "1", "--out", str(tmp_path / "w.nii.gz")]) == 0
    assert "1 windows, budget; inplane 1.5 mm" in capsys.readouterr().out
    assert main([*run, "--mode", "crop", "--out", str(tmp_path / "c.nii.gz")]) == 0
    whole_one, crop = (np.asarray(nib.load(str(tmp_path / n)).dataobj) for n in ("w.nii.gz", "c.nii.gz"))
    assert np.array_equal(whole_one, crop) and crop.any()


@pytest.mark.parametrize(
    "option,match", [(["--resample", "cubic"], "unknown resampling policy"), (["--overlap", "1.5"], "overlap")]
)
def test_cli_bad_options(core_file, tmp_path, capsys, option, match):
    out = tmp_path / "m.nii.gz"
    rc = main(["predict", "--core", core_file, "--image", str(BRAIN), "--point", "185,118,14", *option, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and match in err and "\n" not in err
    assert not out.exists()
