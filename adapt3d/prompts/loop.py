"""The click loop: prompts applied one after another on one encoded input.

Every verb that clicks (training rounds, the N-click protocols, ``predict``, whole-volume windows,
the CVPR 2025 strategy) runs this loop: each decoder pass sees all clicks so far and, when the
core's contract takes mask prompts, the previous low-res logits (zeros before the first click,
as the official SAM-Med3D inference; or a given starting mask). Cores without mask prompts
(SegVol) get a fresh pass with the clicks so far.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.cores import core_spec


def _sizes(size: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return tuple(size) if isinstance(size, (tuple, list)) else (size,) * dims


class ClickLoop:
    """Clicks on one encoded batch ``emb`` (B, C, *grid).

    ``start``: the mask prompt before the first click: ``"zeros"`` (default, the official first-click
    input), given low-res logits, or None (no mask prompt on the first pass). Cores without mask
    prompts never get one. ``detach``: feed back detached logits (training: no gradient through
    the rounds).
    """

    def __init__(
        self, model: nn.Module, emb: torch.Tensor, *, start: torch.Tensor | str | None = "zeros", detach: bool = False
    ) -> None:
        self.model, self.emb, self.detach = model, emb, detach
        self.dims = emb.dim() - 2
        self.feedback = core_spec(model).contract.takes("mask")
        if isinstance(start, str):
            start = torch.zeros(emb.shape[0], 1, *_sizes(model.low_res_size, self.dims), device=emb.device, dtype=emb.dtype)
        self.logits = start if self.feedback else None
        self.iou: torch.Tensor | None = None

    def step(self, points: torch.Tensor | None, labels: torch.Tensor | None, **prompts: Any) -> torch.Tensor:
        """Low-res logits after one more decoder pass with ``points``/``labels`` (all clicks so far)
        and any other prompts the core takes (``boxes``, ``text``, ``multimask_output``...)."""
        mask = None
        if self.feedback and self.logits is not None:
            mask = self.logits.detach() if self.detach else self.logits
            mask = mask.to(self.emb.dtype)
        self.logits, self.iou = self.model.decode(self.emb, points, labels, mask_logits=mask, **prompts)
        return self.logits

    def keep(self, channel: int) -> torch.Tensor:
        """Keep one output channel of a multimask pass (e.g. the best by predicted IoU) as the logits."""
        self.logits = self.logits[:, channel : channel + 1]
        return self.logits

    def upsampled(self) -> torch.Tensor:
        """The latest logits resized to the model input, in float32."""
        return upsampled(self.model, self.logits)


def upsampled(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Low-res ``logits`` (B, C, *low) resized to ``model``'s input, in float32."""
    dims = logits.dim() - 2
    mode = "trilinear" if dims == 3 else "bilinear"
    return F.interpolate(logits.float(), size=_sizes(model.image_size, dims), mode=mode, align_corners=False)
