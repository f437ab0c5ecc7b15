"""Clicks refining an automatic result: the class prompt's mask is the clicks' starting mask prompt.

Training (:mod:`adapt3d.auto.training`) puts the first click at the automatic round's error with
its logits as the mask prompt, so the same model corrects an automatic mask. Here:

1. The automatic logits of the class on the working grid (the *prior*) come from the class
   prompts (:func:`~adapt3d.auto.predict.blended_class_logits`).
2. Each click seeds a window of the core's input size centred on it unless it lies in an earlier
   one (positive and negative clicks alike: a negative click alone removes a false positive).
3. Per window, in order: the current logits inside it (the prior, blended with windows already
   refined), averaged down to the low-res size, are the mask prompt; the clicks inside the window
   are applied one after another (:class:`~adapt3d.prompts.loop.ClickLoop`).
4. Window logits are blended with the whole-volume weights (``BLEND_WEIGHTS``) over the prior,
   which counts with the small weight ``PRIOR_WEIGHT``: inside a refined window its own logits
   decide (with Gaussian weights the prior takes over only within the last few voxels of its
   faces), everywhere else the automatic result stands.

Cost: the automatic pass, then one encoder pass per click window (reused from ``cache`` by window
start when given) and one decoder pass per click and window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.auto.predict import AutoPrediction, blended_class_logits, input_probability, label_map
from adapt3d.auto.prompts import ClassPrompts
from adapt3d.data.preprocess import Window, centred_window
from adapt3d.cores.registry import CORES
from adapt3d.errors import ConfigError, InputError
from adapt3d.evaluate.nclick import eval_mode
from adapt3d.infer.whole_volume import BLEND_WEIGHTS, WholeVolumeConfig, WorkingVolume
from adapt3d.infer.window_cache import WindowCache
from adapt3d.prompts.loop import ClickLoop

#: Blending weight of the automatic logits under a refined window (a window's centre weighs 1).
PRIOR_WEIGHT = 1e-3


@torch.no_grad()
def refine_logits(
    model: nn.Module,
    prior: np.ndarray,
    prepared: WorkingVolume,
    points_ijk: Sequence[Sequence[float]],
    labels: Sequence[int],
    config: WholeVolumeConfig,
    cache: WindowCache | None = None,
) -> tuple[np.ndarray, list[Window]]:
    """Working-grid logits of ``prior`` (automatic logits, working grid) refined by clicks at input
    voxel indices ``points_ijk`` (``labels`` 1 / 0), and the windows that ran."""
    size, device = model.image_size, next(model.parameters()).device
    clicks = np.stack([prepared.grid.to_working(np.asarray(p, dtype=float)) for p in points_ijk])
    click_labels = np.asarray(labels, dtype=np.int64)
    weights = BLEND_WEIGHTS.get(config.blend)(size)
    logit_sum = PRIOR_WEIGHT * prior.astype(np.float32)
    weight_sum = np.full(prior.shape, PRIOR_WEIGHT, np.float32)
    windows: list[Window] = []
    for point in clicks:
        if not any(w.contains(point) for w in windows):
            windows.append(centred_window(point, size))
    factor = size // model.low_res_size
    for window in windows:
        total, weight = window.extract(logit_sum), window.extract(weight_sum)
        current = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
        start = F.avg_pool3d(torch.from_numpy(current)[None, None], factor).to(device)
        emb = prepared.encode(model, window, config.normalization, cache)
        inside = np.array([window.contains(p) for p in clicks])
        pts = torch.tensor(clicks[inside] - np.asarray(window.start, dtype=float), dtype=torch.float32).round()[None].to(device)
        lab = torch.from_numpy(click_labels[inside])[None].to(device)
        loop = ClickLoop(model, emb, start=start.to(emb.dtype))
        for n in range(1, len(lab[0]) + 1):
            loop.step(pts[:, :n], lab[:, :n])
        logits = loop.upsampled()[0, 0].cpu().numpy()
        in_volume, in_window = window.overlap(prior.shape)
        logit_sum[in_volume] += weights[in_window] * logits[in_window]
        weight_sum[in_volume] += weights[in_window]
    return logit_sum / weight_sum, windows


def check_refinable(core_type: str) -> None:
    """:class:`ConfigError` unless the contract of core ``core_type`` takes mask prompts and predicts
    by windows (the automatic logits are the clicks' starting mask prompt)."""
    spec = CORES.get(core_type)
    if not spec.contract.takes("mask") or spec.contract.inference != "windows":
        raise ConfigError(f"--refine: the {spec.name} core takes no mask prompt in windows (its contract), so clicks cannot "
                          "start from an automatic mask; refinement is for SAM-style cores")


def predict_refined(
    model: nn.Module,
    prompts: ClassPrompts,
    prepared: WorkingVolume,
    config: WholeVolumeConfig,
    refine: str,
    points_ijk: Sequence[Sequence[float]],
    labels: Sequence[int],
    classes: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    probabilities: bool = False,
) -> AutoPrediction:
    """The automatic label map of ``classes`` (None: all) with class ``refine`` corrected by the
    clicks (input voxel indices); the other classes keep their automatic masks."""
    t0 = time.time()
    indices = prompts.indices(classes)
    names = tuple(prompts.class_names[i] for i in indices)
    if refine not in names:
        raise InputError(f"--refine {refine!r}: not among the predicted classes ({', '.join(names)})")
    with eval_mode(model):
        logits, n_windows = blended_class_logits(model, prompts, prepared, indices, config)
        c = names.index(refine)
        logits[c], windows = refine_logits(model, logits[c], prepared, points_ijk, labels, config)
    values = tuple(prompts.label_values[i] for i in indices)
    label, kept = label_map((input_probability(c, prepared.grid) for c in logits), values, threshold, keep=probabilities)
    return AutoPrediction(label, prepared.grid.input_affine.copy(), names, values, n_windows + len(windows),
                          time.time() - t0, dict(zip(names, kept)) if probabilities else None)
