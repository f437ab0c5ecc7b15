"""SAM-Med3D prompt encoder: point clicks and low-res mask logits to sparse/dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt3d.cores.common import LayerNorm3d, PromptEncoderBase


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D coordinates, laid out as the official model lays them out."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates in [0, 1]; output is [sin, cos, sin] as in the released weights' code."""
        gaussian = self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * ((2 * coords.to(gaussian.dtype) - 1) @ gaussian)
        return torch.cat([torch.sin(proj), torch.cos(proj), torch.sin(proj)], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        """Dense encoding of a grid, (C, X, Y, Z).

        As in the official code, the first coordinate runs along the grid's second axis and the
        second along its first (each divided by the other axis' size); cubic grids are unaffected.
        """
        x, y, z = size
        dev = self.positional_encoding_gaussian_matrix.device
        i = torch.arange(x, device=dev, dtype=torch.float32)[:, None, None].expand(x, y, z)
        j = torch.arange(y, device=dev, dtype=torch.float32)[None, :, None].expand(x, y, z)
        k = torch.arange(z, device=dev, dtype=torch.float32)[None, None, :].expand(x, y, z)
        coords = torch.stack([(j + 0.5) / x, (i + 0.5) / y, (k + 0.5) / z], dim=-1)
        return self._encode(coords).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        """Encode (B, N, 3) voxel coordinates of an image of ``image_size``."""
        scale = torch.tensor(image_size, dtype=torch.float32, device=coords.device)
        return self._encode(coords.float() / scale)


class PromptEncoder3D(PromptEncoderBase):
    """Encodes points (coords, labels: 1 positive, 0 negative, -1 padding) and mask logits; no boxes."""

    num_point_embeddings, conv_cls, norm_cls = 2, nn.Conv3d, LayerNorm3d

    def make_pe_layer(self, embed_dim: int) -> nn.Module:
        return PositionEmbeddingRandom3D(embed_dim // 3)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # voxel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        neg, pos, none = (labels == 0)[..., None], (labels == 1)[..., None], (labels == -1)[..., None]
        emb = torch.where(none, torch.zeros_like(emb), emb)
        emb = emb + none * self.not_a_point_embed.weight
        emb = emb + neg * self.point_embeddings[0].weight + pos * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        raise ValueError("SAM-Med3D has no box embeddings: give points (and optionally a mask) instead")
