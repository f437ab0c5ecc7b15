"""The ``seggpt`` backend: in-context 2D propagation with ``transformers``' SegGPT.

Each unlabelled slice is segmented with its nearest keyframe (image + that class's mask) as the
in-context prompt, one class at a time; a slice halfway between two keyframes gets the mean of
both predictions. A keyframe without the class prompts nothing: its share is probability 0.

Slices become 8-bit RGB as SegGPT expects: the volume's intensities between its 0.5th and 99.5th
percentiles are mapped linearly to 0-255 (clipped) and the grey value repeated in R, G and B.
Masks use the processor's binary palette (``num_labels=1``: background black, object white).

Foreground score (documented mapping): SegGPT paints the target half of its output as an image;
the score is that painting un-normalised with the processor's mean/std, clipped to [0, 1] per
channel (as the processor clips to 0-255) and averaged over R, G, B — where it lies between the
background colour (0) and the object colour (1). ``score > 0.5`` is exactly the processor's own
decision (nearest palette colour in squared L2, ties to background), so 0.5 is the natural
threshold. The score map is resized to the slice bilinearly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.data.imageio import Volume
from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.pseudolabel.backends import PSEUDOLABEL_BACKENDS, Backend, Probabilities, Resources, nearest_keyframes
from adapt3d.pseudolabel.keyframes import SparseLabel, slab

PERCENTILES = (0.5, 99.5)


@dataclass
class SegGpt:
    """A SegGPT model and its image processor."""

    model: nn.Module
    processor: Any

    @property
    def image_size(self) -> tuple[int, int]:
        """Height, width of one image (prompt or target): SegGPT stacks two of them vertically."""
        size = self.model.config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        return height // 2, width

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_seggpt(directory: str | os.PathLike, *, device: str = "cpu") -> SegGpt:
    """Load ``SegGptForImageSegmentation`` (and its processor, if saved) from a local directory."""
    from transformers import SegGptConfig, SegGptForImageSegmentation, SegGptImageProcessor

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a SegGPT weights directory (no config.json)")
    try:
        config = SegGptConfig.from_pretrained(directory)
        if config.model_type != "seggpt":
            raise ValueError(f"config.json is a {config.model_type!r} model")
        model = SegGptForImageSegmentation.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{directory}: cannot load SegGPT ({str(exc).splitlines()[0]})") from None
    has_processor = (directory / "preprocessor_config.json").is_file()
    processor = SegGptImageProcessor.from_pretrained(directory) if has_processor else SegGptImageProcessor()
    return SegGpt(model.to(torch.device(device)).eval(), processor)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Intensities → 0-255 between the volume's 0.5th and 99.5th percentiles (module docstring)."""
    lo, hi = np.percentile(array, PERCENTILES)
    scaled = (array.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def foreground_score(pred_masks: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, 2H, W) SegGPT paintings → (B, H, W) foreground score in [0, 1] (module docstring)."""
    target = pred_masks[:, :, pred_masks.shape[2] // 2 :, :].float()
    std_t = torch.tensor(std, dtype=torch.float32, device=target.device)[None, :, None, None]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=target.device)[None, :, None, None]
    return (target * std_t + mean_t).clamp(0.0, 1.0).mean(dim=1)


@torch.no_grad()
def segment_slices(seggpt: SegGpt, images: list[np.ndarray], prompts: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Foreground scores (B, H, W) of 2D uint8 ``images`` given prompt images and binary masks."""
    rgb = [np.repeat(a[..., None], 3, axis=-1) for a in images]
    prompt_rgb = [np.repeat(a[..., None], 3, axis=-1) for a in prompts]
    height, width = seggpt.image_size
    inputs = seggpt.processor(
        images=rgb,
        prompt_images=prompt_rgb,
        prompt_masks=[m.astype(np.uint8) for m in masks],
        num_labels=1,
        size={"height": height, "width": width},
        input_data_format="channels_last",
        return_tensors="pt",
    )
    out = seggpt.model(**{k: v.to(seggpt.device) for k, v in inputs.items()})
    score = foreground_score(out.pred_masks, seggpt.processor.image_mean, seggpt.processor.image_std)
    resized = F.interpolate(score[:, None], size=images[0].shape, mode="bilinear", align_corners=False)
    return resized[:, 0].cpu().numpy()


def propagate_seggpt(
    image: Volume, sparse: SparseLabel, classes: Mapping[str, int], *, seggpt: SegGpt, batch_size: int = 8
) -> Probabilities:
    """Segment every non-keyframe slice with its nearest keyframe as the prompt (module docstring)."""
    grey = to_uint8(image.array)
    nearest = nearest_keyframes(sparse.n_slices, sparse.keyframes)
    keyset = set(sparse.keyframes)
    out: Probabilities = {}
    for class_name, class_id in classes.items():
        prob = np.zeros(image.shape, dtype=np.float32)
        jobs = [(s, k) for s in range(sparse.n_slices) if s not in keyset for k in nearest[s] if sparse.keyframe(k, class_id).any()]
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            scores = segment_slices(
                seggpt,
                [grey[slab(sparse.axis, s)] for s, _ in batch],
                [grey[slab(sparse.axis, k)] for _, k in batch],
                [sparse.keyframe(k, class_id) for _, k in batch],
            )
            for (s, _), score in zip(batch, scores):
                prob[slab(sparse.axis, s)] += score / len(nearest[s])
        out[class_name] = prob
    return out


def _load(resources: Resources) -> dict:
    if resources.seggpt is None:
        raise ConfigError("the 'seggpt' pseudo-label backend needs --seggpt DIR (a local SegGPT weights directory)")
    return {"seggpt": load_seggpt(resources.seggpt, device=resources.device)}


PSEUDOLABEL_BACKENDS.register(
    "seggpt",
    Backend(propagate_seggpt, uses=("seggpt",), load_options=_load),
)
