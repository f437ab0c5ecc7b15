"""SAM-Med3D prompt encoder: point clicks and low-res mask logits to sparse/dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt3d.cores.common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D coordinates, laid out as the official model lays them out."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates in [0, 1]; output is [sin, cos, sin] as in the released weights' code."""
        proj = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
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


class PromptEncoder3D(nn.Module):
    """Encodes points (coords, labels: 1 positive, 0 negative, -1 padding) and mask logits."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, C, X, Y, Z)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

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

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return sparse (B, N, C) and dense (B, C, X, Y, Z) prompt embeddings."""
        if boxes is not None:
            raise ValueError("SAM-Med3D has no box embeddings: give points (and optionally a mask) instead")
        if points is not None:
            bs = points[0].shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        dev = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=dev)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=True)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
