"""SegVol mask decoder: SAM-Med3D's decoder (same transformer, tokens and heads) with two changes.

1. The first upscaling norm is a ``nn.LayerNorm`` over the whole (C/4, 2·g0, 2·g1, 2·g2) map, so
   the decoder is tied to the embedding grid.
2. A text embedding, projected by ``txt_align_upscaled_embedding`` to C/8, adds its dot product
   with the upscaled image embedding to every mask.
"""

from __future__ import annotations

import torch
from torch import nn

from adapt3d.cores.common import output_upscaling
from adapt3d.cores.sam_med3d.mask_decoder import MaskDecoder3D


class MaskDecoder(MaskDecoder3D):
    """Predicts (B, 1 or 3, 4·g0, 4·g1, 4·g2) mask logits and IoU predictions."""

    def __init__(self, transformer_dim: int, image_embedding_size: tuple[int, int, int], **kwargs: int) -> None:
        """``kwargs``: the decoder options of :class:`MaskDecoder3D` (``num_multimask_outputs`` …)."""
        super().__init__(transformer_dim, **kwargs)
        upscaled = tuple(2 * g for g in image_embedding_size)
        self.output_upscaling = output_upscaling(
            nn.ConvTranspose3d, lambda channels: nn.LayerNorm((channels, *upscaled)), transformer_dim
        )
        self.txt_align_upscaled_embedding = nn.Linear(transformer_dim, transformer_dim // 8)

    def forward(  # type: ignore[override]  (the release's signature: text_embedding second)
        self,
        image_embeddings: torch.Tensor,
        text_embedding: torch.Tensor | None,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits and IoU predictions: the first mask, or the multimask outputs."""
        upscaled: list[torch.Tensor] = []
        hook = self.output_upscaling.register_forward_hook(lambda module, args, out: upscaled.append(out))
        try:
            masks, iou_pred = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            )
        finally:
            hook.remove()
        if text_embedding is not None:
            flat = upscaled[0].flatten(2)  # (B, C/8, N)
            similarity = self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1) @ flat
            masks = masks + similarity.reshape(masks.shape[0], 1, *masks.shape[2:])
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]
