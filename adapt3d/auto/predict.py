"""Automatic whole-volume segmentation with learned class prompts: no click, no label input.

The whole-volume step follows the core's contract (``inference``), registered in
:data:`AUTO_INFERENCE`; the label map is made the same way for every core.

``windows`` (SAM-style cores):

1. The image is clamped (CT), reoriented and resampled to the core's working grid as prompted
   whole-volume prediction does (:meth:`WholeVolumePredictor.prepare`: resampling policy, spacing).
2. Windows of the core's input size tile the working volume on a lattice of stride
   ``size × (1 - overlap)``, the last window of each axis flush with the volume's end (an axis
   shorter than a window gets one window centred on it, zero-padded, as elsewhere).
3. Each window is normalised and encoded once; per class, the decoder gets that class's prompt
   alone (no point, no mask prompt). Window logits are blended per class with the whole-volume
   blending weights (``BLEND_WEIGHTS``: Gaussian σ = size / 8, or constant).
4. Per class, the probability (sigmoid of the blend) is mapped back onto the input's exact voxel
   grid (linear).

``zoom`` (SegVol): the image is put into SegVol's geometry once (RAS, (z, y, x), native spacing,
its volume normalisation: :func:`~adapt3d.cores.segvol.zoom.volume_to_model`); per class,
zoom-out-zoom-in runs with the class vector as its only prompt (``text``), with SegVol's own
zoom settings (as ``predict --text``), and the logits' sigmoid is mapped back onto the input grid.

Label map: per voxel, the class of highest probability if that probability exceeds
``threshold`` (0.5), else 0 (background). Labels are the classes' values in the training
dataset's label maps.

Cost (windows): one encoder pass per window and one decoder pass per window and class; memory:
one float32 working-grid array per class (blended logits) plus two input-grid arrays (best
probability, label). Zoom: one zoom-out pass and the zoom-in windows per class.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from adapt3d.auto.prompts import ClassPrompts
from adapt3d.cores import core_spec
from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import Grid, Window, from_working_grid
from adapt3d.errors import ConfigError
from adapt3d.evaluate.nclick import eval_mode
from adapt3d.infer.whole_volume import (
    BLEND_WEIGHTS,
    WholeVolumeConfig,
    WholeVolumePredictor,
    WorkingVolume,
)
from adapt3d.registry import Registry

#: Classes decoded together per window (bounds the decoder's batch).
CLASS_CHUNK = 8


@dataclass
class AutoPrediction:
    """A multi-class label map on the input's voxel grid and how it was made."""

    labels: np.ndarray  # input grid; the classes' label values, 0 background
    affine: np.ndarray  # the input's affine, unchanged
    class_names: tuple[str, ...]
    label_values: tuple[int, ...]
    windows: int  # windows encoded (zoom: zoom-out passes and zoom-in windows, over the classes)
    seconds: float
    probabilities: dict[str, np.ndarray] | None = None  # per class, float32, input grid (on request)

    def mask(self, name: str) -> np.ndarray:
        """The boolean mask of class ``name``."""
        return self.labels == self.label_values[self.class_names.index(name)]

    def summary(self) -> dict:
        """JSON-friendly facts: classes, voxels per class, windows, seconds."""
        return {"classes": {n: int(self.mask(n).sum()) for n in self.class_names}, "windows": self.windows,
                "seconds": round(self.seconds, 3)}


def lattice_windows(shape: Sequence[int], size: int, stride: int) -> list[Window]:
    """Windows tiling an array of ``shape``: starts 0, stride, … and ``n - size`` per axis (one
    centred window where ``n <= size``)."""
    axes = []
    for n in shape:
        if n <= size:
            axes.append([(n - size) // 2])
        else:
            axes.append(sorted(set(range(0, n - size, stride)) | {n - size}))
    return [Window(tuple(start), size) for start in itertools.product(*axes)]  # type: ignore[arg-type]


@torch.no_grad()
def blended_class_logits(
    model: nn.Module, prompts: ClassPrompts, prepared: WorkingVolume, indices: Sequence[int], config: WholeVolumeConfig
) -> tuple[np.ndarray, int]:
    """Blended working-grid logits (C, *shape) of the classes at ``indices``, and the window count
    (``prompts`` on the model's device)."""
    size, work = model.image_size, prepared.work
    stride = max(1, round(size * (1 - config.overlap)))
    weights = BLEND_WEIGHTS.get(config.blend)(size)
    device = next(model.parameters()).device
    index = torch.tensor(list(indices), device=device)
    logit_sum = np.zeros((len(indices), *work.shape), np.float32)
    weight_sum = np.zeros(work.shape, np.float32)
    windows = lattice_windows(work.shape, size, stride)
    for window in tqdm(windows, desc="windows", unit="win", disable=None, leave=False):
        emb = prepared.encode(model, window, config.normalization)
        parts = []
        for lo in range(0, len(indices), CLASS_CHUNK):
            low, _ = model.decode(emb, None, None, mask_logits=None, **prompts.decode_inputs(index[lo : lo + CLASS_CHUNK]))
            parts.append(F.interpolate(low.float(), size=(size,) * 3, mode="trilinear", align_corners=False)[:, 0])
        full = torch.cat(parts).cpu().numpy()
        in_volume, in_window = window.overlap(work.shape)
        logit_sum[(slice(None), *in_volume)] += weights[in_window] * full[(slice(None), *in_window)]
        weight_sum[in_volume] += weights[in_window]
    return logit_sum / weight_sum, len(windows)  # every voxel lies in a window, every weight > 0


#: Per class at ``indices``: its input-grid probability (float32) and the windows encoded for it.
ClassProbabilities = Iterator[tuple[np.ndarray, int]]


@dataclass(frozen=True)
class AutoInference:
    """A contract's whole-volume step for class prompts: ``prepare`` (model, image, modality,
    config) puts an image into the core's geometry once; ``probabilities`` (model, prompts, prepared,
    indices, config, zoom_in) gives each class's probability on the input grid; ``from_case``
    (a :class:`~adapt3d.data.items.PreparedCase` on an evaluation's working grid, modality), where
    the step runs on that grid, takes an evaluation's prepared case as it is."""

    prepare: Callable[[nn.Module, Volume, str, WholeVolumeConfig], Any]
    probabilities: Callable[[nn.Module, ClassPrompts, Any, Sequence[int], WholeVolumeConfig, bool], ClassProbabilities]
    from_case: Callable[[Any, str], Any] | None = None


#: The whole-volume step of automatic prediction, by the contract's ``inference`` name.
AUTO_INFERENCE: Registry[AutoInference] = Registry("automatic whole-volume inference")


def _window_probabilities(model: nn.Module, prompts: ClassPrompts, prepared: WorkingVolume, indices: Sequence[int],
                          config: WholeVolumeConfig, zoom_in: bool) -> ClassProbabilities:
    """The lattice windows (every window is encoded once for all classes; ``zoom_in`` does not apply)."""
    logits, n_windows = blended_class_logits(model, prompts, prepared, indices, config)
    for c in range(len(indices)):
        yield input_probability(logits[c], prepared.grid), n_windows if c == 0 else 0


def input_probability(logits: np.ndarray, grid: Grid) -> np.ndarray:
    """The sigmoid of working-grid ``logits`` mapped onto the input's voxel grid (linear), float32."""
    return from_working_grid(special.expit(logits), grid, order=1).astype(np.float32, copy=False)


AUTO_INFERENCE.register("windows", AutoInference(
    lambda model, image, modality, config: WholeVolumePredictor(model, config).prepare(image, modality), _window_probabilities,
    lambda case, modality: WorkingVolume(case.image, case.grid, modality)))


@dataclass
class ZoomVolume:
    """An image in SegVol's geometry: RAS, (z, y, x), native spacing, normalised (``volume_to_model``)."""

    image: torch.Tensor  # (D, H, W)
    grid: Grid
    modality: str


def _zoom_prepare(model: nn.Module, image: Volume, modality: str, config: WholeVolumeConfig) -> ZoomVolume:
    from adapt3d.cores.segvol.zoom import volume_to_model

    array, grid = volume_to_model(image)
    return ZoomVolume(array, grid, modality)


def _zoom_probabilities(model: nn.Module, prompts: ClassPrompts, prepared: ZoomVolume, indices: Sequence[int],
                        config: WholeVolumeConfig, zoom_in: bool) -> ClassProbabilities:
    """Zoom-out-zoom-in per class, its class prompt the only prompt (``zoom_in`` False: the zoom-out pass alone)."""
    from adapt3d.cores.segvol.zoom import zoom_out_zoom_in

    device = next(model.parameters()).device
    for i in indices:
        result = zoom_out_zoom_in(model, prepared.image, **prompts.decode_inputs(torch.tensor([i], device=device)),
                                  modality=prepared.modality, zoom_in=zoom_in, progress=False)
        logits = np.ascontiguousarray(result.logits.cpu().numpy().transpose(2, 1, 0))  # (z, y, x) -> RAS (x, y, z)
        yield special.expit(from_working_grid(logits, prepared.grid, order=1)).astype(np.float32, copy=False), 1 + result.num_windows


AUTO_INFERENCE.register("zoom", AutoInference(_zoom_prepare, _zoom_probabilities))


def auto_inference(model: nn.Module) -> AutoInference:
    """The whole-volume step of ``model``'s contract; a one-line :class:`ConfigError` if it has none."""
    spec = core_spec(model)
    if spec.contract.inference is None:
        raise ConfigError(f"core {spec.name!r} has no whole-volume inference in its contract: no automatic prediction")
    return AUTO_INFERENCE.get(spec.contract.inference)


def predict_working(
    model: nn.Module,
    prompts: ClassPrompts,
    prepared: Any,
    config: WholeVolumeConfig,
    classes: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    probabilities: bool = False,
    zoom_in: bool = True,
) -> AutoPrediction:
    """Automatic prediction of ``classes`` (None: all with prompts) on an image prepared by the
    contract's step (:attr:`AutoInference.prepare`; windows: a :class:`WorkingVolume`), returned on
    its input grid (``prepared.grid``). ``zoom_in``: False keeps SegVol's zoom-out pass alone."""
    t0 = time.time()
    indices = prompts.indices(classes)
    inference = auto_inference(model)
    prompts = prompts.to(next(model.parameters()).device)
    names = tuple(prompts.class_names[i] for i in indices)
    values = tuple(prompts.label_values[i] for i in indices)
    counts: list[int] = []

    def each_class():
        for prob, windows in inference.probabilities(model, prompts, prepared, indices, config, zoom_in):
            counts.append(windows)
            yield prob

    with eval_mode(model):
        labels, kept = label_map(each_class(), values, threshold, keep=probabilities)
    return AutoPrediction(labels, prepared.grid.input_affine.copy(), names, values, sum(counts), time.time() - t0,
                          dict(zip(names, kept)) if probabilities else None)


def label_map(probabilities: Iterable[np.ndarray], label_values: Sequence[int], threshold: float = 0.5, *,
              keep: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """The label map of per-class input-grid probabilities (in ``label_values``' order): per voxel the
    value of the most probable class if its probability exceeds ``threshold``, else 0; and, with
    ``keep``, the probabilities (else an empty list)."""
    best = labels = None
    kept = []
    for prob, value in zip(probabilities, label_values):
        if best is None:
            best = np.full(prob.shape, threshold, np.float32)
            labels = np.zeros(prob.shape, np.uint8 if max(label_values) < 256 else np.uint16)
        wins = prob > best
        labels[wins], best[wins] = value, prob[wins]
        if keep:
            kept.append(prob)
    return labels, kept


def predict_auto(
    model: nn.Module,
    prompts: ClassPrompts,
    image: Volume,
    modality: str,
    config: WholeVolumeConfig,
    classes: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    probabilities: bool = False,
) -> AutoPrediction:
    """Segment ``classes`` (None: every class with a prompt) in ``image`` without any prompt from the user."""
    prepared = auto_inference(model).prepare(model, image, modality, config)
    return predict_working(model, prompts, prepared, config, classes, threshold=threshold, probabilities=probabilities)
