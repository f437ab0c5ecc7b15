"""SAM mask decoder: image embedding + prompt tokens → low-res mask logits and IoU predictions.

Its parts and key names are SAM-Med3D's (the two-way transformer works on token sequences, so it
is the same module) except the upscaling, which is 2D here.
"""

from __future__ import annotations

import torch
from torch import nn

from adapt3d.cores.sam2d.common import LayerNorm2d
from adapt3d.cores.sam_med3d.mask_decoder import MaskDecoder3D


class MaskDecoder(MaskDecoder3D):
    """Predicts (B, 1 or 3, 4h, 4w) mask logits from an image embedding and prompt embeddings.

    One image embedding serves every prompt of the batch; B embeddings pair with B prompts.
    """

    def __init__(self, transformer_dim: int, **kwargs: int) -> None:
        super().__init__(transformer_dim, **kwargs)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks (n, masks, 4h, 4w) and IoU predictions (n, masks)."""
        n = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.expand(n, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings.expand(n, -1, -1, -1) if image_embeddings.shape[0] == 1 else image_embeddings
        src = src + dense_prompt_embeddings
        hs, image_tokens = self.transformer(src, image_pe.expand(n, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(image_tokens.transpose(1, 2).reshape(src.shape))
        weights = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        return torch.einsum("nmc,nchw->nmhw", weights, upscaled), self.iou_prediction_head(hs[:, 0])
