"""Automatic whole-volume segmentation with learned class prompts: no click, no label input.

1. The image is clamped (CT), reoriented and resampled to the core's working grid as prompted
   whole-volume prediction does (:meth:`WholeVolumePredictor.prepare`: resampling policy, spacing).
2. Windows of the core's input size tile the working volume on a lattice of stride
   ``size × (1 - overlap)``, the last window of each axis flush with the volume's end (an axis
   shorter than a window gets one window centred on it, zero-padded, as elsewhere).
3. Each window is normalised and encoded once; per class, the decoder gets that class's prompt
   tokens alone (no point, no mask prompt). Window logits are blended per class with the
   whole-volume blending weights (``BLEND_WEIGHTS``: Gaussian σ = size / 8, or constant).
4. Per class, the probability (sigmoid of the blend) is mapped back onto the input's exact voxel
   grid (linear); the label map takes, per voxel, the class of highest probability if that
   probability exceeds ``threshold`` (0.5), else 0 (background). Labels are the classes' values in
   the training dataset's label maps.

Cost: one encoder pass per window and one decoder pass per window and class; memory: one float32
working-grid array per class (blended logits) plus two input-grid arrays (best probability, label).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from adapt3d.auto.prompts import ClassPrompts
from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import Window, from_working_grid, normalise
from adapt3d.evaluate.nclick import eval_mode
from adapt3d.infer.whole_volume import (
    BLEND_WEIGHTS,
    WholeVolumeConfig,
    WholeVolumePredictor,
    WorkingVolume,
)

#: Classes decoded together per window (bounds the decoder's batch).
CLASS_CHUNK = 8


@dataclass
class AutoPrediction:
    """A multi-class label map on the input's voxel grid and how it was made."""

    labels: np.ndarray  # input grid; the classes' label values, 0 background
    affine: np.ndarray  # the input's affine, unchanged
    class_names: tuple[str, ...]
    label_values: tuple[int, ...]
    windows: int
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
    """Blended working-grid logits (C, *shape) of the classes at ``indices``, and the window count."""
    size, work = model.image_size, prepared.work
    stride = max(1, round(size * (1 - config.overlap)))
    weights = BLEND_WEIGHTS.get(config.blend)(size)
    device = next(model.parameters()).device
    tokens = prompts.tokens.detach()[list(indices)].to(device)
    logit_sum = np.zeros((len(indices), *work.shape), np.float32)
    weight_sum = np.zeros(work.shape, np.float32)
    windows = lattice_windows(work.shape, size, stride)
    for window in tqdm(windows, desc="windows", unit="win", disable=None, leave=False):
        crop = normalise(window.extract(work), prepared.modality, config.normalization)
        emb = model.encode(torch.from_numpy(crop)[None, None].to(device))
        parts = []
        for lo in range(0, len(indices), CLASS_CHUNK):
            low, _ = model.decode(emb, None, None, mask_logits=None, prompt_tokens=tokens[lo : lo + CLASS_CHUNK])
            parts.append(F.interpolate(low.float(), size=(size,) * 3, mode="trilinear", align_corners=False)[:, 0])
        full = torch.cat(parts).cpu().numpy()
        in_volume, in_window = window.overlap(work.shape)
        logit_sum[(slice(None), *in_volume)] += weights[in_window] * full[(slice(None), *in_window)]
        weight_sum[in_volume] += weights[in_window]
    return logit_sum / weight_sum, len(windows)  # every voxel lies in a window, every weight > 0


def predict_working(
    model: nn.Module,
    prompts: ClassPrompts,
    prepared: WorkingVolume,
    config: WholeVolumeConfig,
    classes: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    probabilities: bool = False,
) -> AutoPrediction:
    """Automatic prediction of ``classes`` (None: all with prompts) on a prepared working volume,
    returned on its input grid (``prepared.grid``)."""
    t0 = time.time()
    indices = prompts.indices(classes)
    with eval_mode(model):
        logits, n_windows = blended_class_logits(model, prompts, prepared, indices, config)
    names = tuple(prompts.class_names[i] for i in indices)
    values = tuple(prompts.label_values[i] for i in indices)
    labels, kept = label_map(logits, values, prepared, threshold, keep=probabilities)
    return AutoPrediction(labels, prepared.grid.input_affine.copy(), names, values, n_windows, time.time() - t0,
                          dict(zip(names, kept)) if probabilities else None)


def label_map(logits: np.ndarray, label_values: Sequence[int], prepared: WorkingVolume,
              threshold: float = 0.5, *, keep: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """The input-grid label map of working-grid class logits (C, *shape): per voxel the value of the
    most probable class if its probability exceeds ``threshold``, else 0; and, with ``keep``, each
    class's input-grid probability (else an empty list)."""
    best = labels = None
    probs = []
    for c, value in enumerate(label_values):
        prob = from_working_grid(special.expit(logits[c]), prepared.grid, order=1).astype(np.float32, copy=False)
        if best is None:
            best = np.full(prob.shape, threshold, np.float32)
            labels = np.zeros(prob.shape, np.uint8 if max(label_values) < 256 else np.uint16)
        wins = prob > best
        labels[wins], best[wins] = value, prob[wins]
        if keep:
            probs.append(prob)
    return labels, probs


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
    prepared = WholeVolumePredictor(model, config).prepare(image, modality)
    return predict_working(model, prompts, prepared, config, classes, threshold=threshold, probabilities=probabilities)
