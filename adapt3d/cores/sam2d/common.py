"""Channel LayerNorm of (B, C, H, W) feature maps (``weight``, ``bias`` as in segment-anything)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from adapt3d.cores.common import LayerNorm3d


class LayerNorm2d(LayerNorm3d):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor (LayerNorm3d's parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return channels_last.permute(0, 3, 1, 2)
