"""SAM prompt encoder: points, boxes and low-res mask logits to sparse/dense embeddings (official keys).

Coordinates follow segment-anything: (x, y) = (column, row) in pixels of the model input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt3d.cores.common import PromptEncoderBase
from adapt3d.cores.sam2d.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) coordinates in [0, 1]: ``[sin, cos]`` of 2π(2c-1)·G."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        gaussian = self.positional_encoding_gaussian_matrix
        angles = (2 * coords.to(gaussian.dtype) - 1) @ gaussian * (2 * math.pi)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of pixel centres of an (h, w) grid, (C, h, w)."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._encode(coords).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode (B, N, 2) pixel coordinates (x, y) of an image of ``image_size`` (h, w)."""
        h, w = image_size
        return self._encode(coords.float() / torch.tensor([w, h], dtype=torch.float32, device=coords.device))


class PromptEncoder(PromptEncoderBase):
    """Points (labels 1 positive, 0 negative, -1 padding), boxes (x0, y0, x1, y1) and mask logits.

    Point embeddings: negative point, positive point, box top-left corner, box bottom-right corner.
    """

    num_point_embeddings, conv_cls, norm_cls = 4, nn.Conv2d, LayerNorm2d

    def make_pe_layer(self, embed_dim: int) -> nn.Module:
        return PositionEmbeddingRandom(embed_dim // 2)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        if pad:  # a "no point" token closes the list when no box follows
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        kind = labels[..., None]
        table = torch.stack([self.point_embeddings[0].weight[0], self.point_embeddings[1].weight[0]])
        learned = table[kind.clamp(0, 1).squeeze(-1)]
        return torch.where(kind < 0, self.not_a_point_embed.weight[0].expand_as(pe), pe + learned)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = self.pe_layer.forward_with_coords(boxes.reshape(-1, 2, 2) + 0.5, self.input_image_size)
        return corners + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])[None]
