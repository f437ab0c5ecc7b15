"""SegVol prompt encoder: points, one box and a text embedding → sparse tokens; a no-mask dense embedding.

Coordinates are voxel indices of the model input in array order (d, h, w). The encoding keeps
the release's conventions exactly (the weights were trained with them):

- a point (d, h, w) is encoded as the Fourier features of ``((d + .5) / H, (h + .5) / D, (w + .5) / W)``
  for an input of size (D, H, W) — the first two sizes are crossed, as in the release;
- the dense positional encoding of the (g0, g1, g2) embedding grid encodes, at cell (i, j, k),
  ``((j + .5) / g1, (i + .5) / g0, (k + .5) / g2)`` — the first two axes swapped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt3d.cores.common import LayerNorm3d, mask_downscaling
from adapt3d.cores.sam_med3d.prompt_encoder import PositionEmbeddingRandom3D, PromptEncoder3D

Grid = tuple[int, int, int]


class PositionEmbeddingRandom(PositionEmbeddingRandom3D):
    """Random Fourier features ``[sin, cos]`` of 3D coordinates, normalised as the release does."""

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        gaussian = self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * ((2 * coords.to(gaussian.dtype) - 1) @ gaussian)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, size: Grid) -> torch.Tensor:
        """Dense encoding of a (g0, g1, g2) grid, (C, g0, g1, g2): cell centres over each axis' size,
        the first two axes swapped."""
        dev = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(g, device=dev, dtype=torch.float32) + 0.5) / g for g in size]
        i, j, k = torch.meshgrid(*axes, indexing="ij")
        return self._encode(torch.stack([j, i, k], dim=-1)).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Grid) -> torch.Tensor:
        """Encode (B, N, 3) voxel coordinates of an input of ``image_size`` (the first two sizes crossed)."""
        scale = torch.tensor([image_size[1], image_size[0], image_size[2]], dtype=torch.float32, device=coords.device)
        return self._encode(coords.float() / scale)


class PromptEncoder(PromptEncoder3D):
    """Sparse tokens: points (label 1 positive, 0 negative, -1 padding), box corners, text embedding.

    SAM-Med3D's encoder with the release's Fourier features, four point embeddings (negative,
    positive, two box corners) and a ``mask_downscaling`` kept for the key layout only: the release
    builds it with 2D convolutions and never feeds masks, so mask prompts are refused.
    """

    def __init__(self, embed_dim: int, image_embedding_size: Grid, input_image_size: Grid, mask_in_chans: int) -> None:
        super().__init__(embed_dim, tuple(image_embedding_size), tuple(input_image_size), mask_in_chans)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        # the release's LayerNorm2d: same parameters as LayerNorm3d
        self.mask_downscaling = mask_downscaling(nn.Conv2d, LayerNorm3d, mask_in_chans, embed_dim)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes.float() + 0.5).reshape(-1, 2, 3)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        return emb + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])[None]

    def forward(  # type: ignore[override]  (the release's signature: boxes and text embedding)
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text_embedding: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, C) and dense (B, C, g0, g1, g2) embeddings.

        ``points`` = ((B, N, 3) coords, (B, N) labels); ``boxes`` (B, 6) or (B, 1, 6) as
        (d0, h0, w0, d1, h1, w1), inclusive voxel indices; ``text_embedding`` (B, C).
        """
        if masks is not None:
            raise ValueError("SegVol has no mask prompt (its released mask_downscaling is untrained and 2D)")
        if boxes is not None and (boxes.shape[-1] != 6 or boxes.dim() != 2 and tuple(boxes.shape[1:]) != (1, 6)):
            raise ValueError(f"boxes must be (B, 6) or (B, 1, 6), got {tuple(boxes.shape)}")
        bs = self.batch_size(None if points is None else points[0], boxes, text_embedding)
        dev = self.no_mask_embed.weight.device
        parts = []
        if points is not None:
            parts.append(self._embed_points(points[0].float(), points[1].to(dev), pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if text_embedding is not None:
            parts.append(text_embedding.unsqueeze(1))
        return self.sparse_tokens(bs, parts), self.no_mask_dense(bs)
