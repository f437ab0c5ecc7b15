"""Segmentation loss: Dice + cross-entropy on sigmoid logits, with an optional ignore mask."""

from __future__ import annotations

import torch
from monai.losses import MaskedDiceLoss
from torch.nn import functional as F

_DICE = MaskedDiceLoss(sigmoid=True, squared_pred=True, reduction="mean")


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """MONAI Dice (squared, sigmoid) + BCE, as SAM-Med3D trains; voxels where ``known`` is 0 are ignored.

    ``logits``/``target``/``known``: (B, 1, D, H, W). Ignored voxels (pseudo-label uncertainty,
    unlabelled slices) contribute nothing to either term, so their gradient is exactly zero.
    """
    target = target.float()
    if known is None:
        known = torch.ones_like(target)
    known = known.float()
    dice = _DICE(logits, target, mask=known)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=known, reduction="sum")
    return dice + bce / known.sum().clamp_min(1.0)
