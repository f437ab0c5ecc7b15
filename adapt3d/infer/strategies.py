"""Whole-volume prompted prediction, by the name a core's contract gives (``contract.inference``).

``windows`` (SAM-Med3D): windows of the core's input grown from the clicks with propagated
clicks (:mod:`adapt3d.infer.whole_volume`), or ``mode="crop"``, the single official crop;
``zoom`` (SegVol): zoom-out-zoom-in with the clicks and, optionally, the class name as text.
A strategy takes the image and clicks in input voxel indices and returns a mask on the input's
exact grid and one line saying how it was made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from adapt3d.cores import PROMPT_KINDS, core_spec
from adapt3d.data.imageio import Volume
from adapt3d.errors import ConfigError
from adapt3d.registry import Registry


@dataclass(frozen=True)
class PredictRequest:
    """One object to segment: clicks (input voxel indices, labels 1/0) and the verb's options."""

    image: Volume
    modality: str
    points: Sequence[Sequence[float]]
    labels: Sequence[int]
    mode: str = "whole"  # windows: whole (grown windows) or crop (the single official crop)
    resample: str = "isotropic"
    spacing: float | None = None  # None: the core's own
    overlap: float = 0.25
    max_windows: int = 27
    text: str | None = None  # class name, for cores that take text prompts


Strategy = Callable[[nn.Module, PredictRequest], tuple[np.ndarray, str]]
INFERENCE: Registry[Strategy] = Registry("whole-volume inference")


@INFERENCE.register("windows")
def _windows(model: nn.Module, req: PredictRequest) -> tuple[np.ndarray, str]:
    from adapt3d.infer.predictor import CropPredictor
    from adapt3d.infer.resampling_policy import working_spacing
    from adapt3d.infer.whole_volume import WholeVolumeConfig, WholeVolumePredictor

    prep = model.preprocessing
    spacing = req.spacing if req.spacing is not None else prep.isotropic_spacing("core")
    config = WholeVolumeConfig(resample=req.resample, overlap=req.overlap, max_windows=req.max_windows, spacing=spacing,
                               normalization=prep.normalization)
    if req.mode == "crop":
        work = working_spacing(config.resample, config.spacing, req.image.affine)
        predictor = CropPredictor(model, target_spacing=work, normalization=prep.normalization)
        return predictor.predict(req.image, req.modality, req.points, req.labels), "1 crop"
    result = WholeVolumePredictor(model, config).predict(req.image, req.modality, req.points, req.labels)
    return result.mask, f"{len(result.windows)} windows, {result.stopped}; {result.resampling.describe()}"


@INFERENCE.register("zoom")
def _zoom(model: nn.Module, req: PredictRequest) -> tuple[np.ndarray, str]:
    from adapt3d.cores.segvol.zoom import segment_volume

    logits, result = segment_volume(model, req.image, text=req.text, points_ijk=list(req.points), labels=list(req.labels),
                                    modality=req.modality)
    text = f", text {req.text!r}" if req.text else ""
    return (logits > 0).astype(np.uint8), f"zoom-out-zoom-in, {result.num_windows} zoom-in windows{text}"


def check_request(model: nn.Module, req: PredictRequest) -> Strategy:
    """The strategy of ``model``'s contract for ``req``; a one-line ConfigError when the core cannot serve it."""
    spec = core_spec(model)
    contract = spec.contract
    if contract.inference is None:
        raise ConfigError(f"core {spec.name!r} has no whole-volume inference in its contract (evaluate it instead)")
    if req.text is not None and not contract.takes("text"):
        prompts = ", ".join(k for k in PROMPT_KINDS if contract.takes(k))
        raise ConfigError(f"--text: core {spec.name!r} takes no text prompts (its prompts: {prompts})")
    if req.mode == "crop" and contract.inference != "windows":
        raise ConfigError(f"--mode crop: core {spec.name!r} predicts by {contract.inference}, not by crops")
    return INFERENCE.get(contract.inference)

