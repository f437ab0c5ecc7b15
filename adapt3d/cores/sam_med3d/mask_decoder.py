"""SAM-Med3D mask decoder: tokens + image embedding → low-res mask logits and IoU predictions."""

from __future__ import annotations

import torch
from torch import nn

from adapt3d.cores.common import MLP, LayerNorm3d, output_upscaling
from adapt3d.cores.sam_med3d.transformer import TwoWayTransformer3D


class MaskDecoder3D(nn.Module):
    """Predicts (B, 1 or 3, 4X, 4Y, 4Z) mask logits from an image embedding and prompt embeddings.

    One image embedding serves every prompt of the batch; B embeddings pair with B prompts. Only
    ``output_upscaling`` knows the grid's dimensionality: subclasses replace it for 2D grids.
    """

    def __init__(
        self,
        transformer_dim: int,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        transformer_depth: int = 2,
        transformer_heads: int = 8,
        transformer_mlp_dim: int = 2048,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer3D(transformer_depth, transformer_dim, transformer_heads, transformer_mlp_dim)
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = output_upscaling(nn.ConvTranspose3d, LayerNorm3d, transformer_dim)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return mask logits and IoU predictions: the first mask, or the three multimask outputs."""
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks (B, masks, *4·grid) and IoU predictions (B, masks)."""
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(bs, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings
        if src.shape[0] != bs:
            src = torch.repeat_interleave(src, bs, dim=0)
        src = src + dense_prompt_embeddings
        pos = image_pe if image_pe.shape[0] == bs else torch.repeat_interleave(image_pe, bs, dim=0)
        hs, src_tokens = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src_tokens.transpose(1, 2).reshape(src.shape))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = (hyper_in @ upscaled.flatten(2)).unflatten(-1, upscaled.shape[2:])
        return masks, self.iou_prediction_head(iou_token_out)
