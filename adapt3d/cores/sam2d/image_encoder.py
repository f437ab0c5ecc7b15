"""SAM ViT image encoder (official key names): windowed attention with decomposed 2D relative positions."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.cores.common import RelPosAttention, ViTBlock, ViTImageEncoder
from adapt3d.cores.sam2d.common import LayerNorm2d
from adapt3d.cores.sam_med3d.attention import relative_table

#: Largest attention-bias block (elements) built at once; global attention over a 64×64 grid
#: is computed in query-row chunks below this size instead of one 12×4096×4096 matrix.
BIAS_BUDGET = 1 << 26


class PatchEmbed(nn.Module):
    """Non-overlapping square patches to tokens: (B, C, H, W) → (B, h, w, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(RelPosAttention):
    """Multi-head self-attention over an (h, w) token grid with decomposed relative positions.

    The bias of query (i, j) for key (i', j') is ``q·Rh[i, i'] + q·Rw[j, j']`` with
    ``R[a, b] = rel_pos[a - b + n - 1]``; the tables must match the grid (no interpolation).
    """

    axes = "hw"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        grid_q = q.view(b, self.num_heads, h, w, -1)
        along_h = torch.einsum("bnijc,ikc->bnijk", grid_q, relative_table(self.rel_pos_h, h, h))
        along_w = torch.einsum("bnijc,jkc->bnijk", grid_q, relative_table(self.rel_pos_w, w, w))
        rows = max(1, BIAS_BUDGET // (b * self.num_heads * w * h * w))
        out = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            bias = along_h[:, :, r0:r1, :, :, None] + along_w[:, :, r0:r1, :, None, :]
            bias = bias.reshape(b, self.num_heads, (r1 - r0) * w, h * w)
            out.append(F.scaled_dot_product_attention(q[:, :, r0 * w : r1 * w], k, v, attn_mask=bias))
        attended = torch.cat(out, dim=2).transpose(1, 2).reshape(b, h, w, c)
        return self.proj(attended)


def _to_windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nh·nw, size, size, C), zero-padding H and W up to whole windows."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, -w % size, 0, -h % size))
    nh, nw = x.shape[1] // size, x.shape[2] // size
    return x.view(b, nh, size, nw, size, c).transpose(2, 3).reshape(b * nh * nw, size, size, c)


def _from_windows(windows: torch.Tensor, size: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: reassemble the grid and drop the padding."""
    nh, nw = -(-h // size), -(-w // size)
    grid = windows.view(b, nh, nw, size, size, -1).transpose(2, 3).reshape(b, nh * size, nw * size, -1)
    return grid[:, :h, :w]


class Block(ViTBlock):
    """Pre-norm transformer block; ``window_size=0`` means global attention over the grid."""

    def make_attention(self, dim: int, num_heads: int, window_size: int, grid: int) -> nn.Module:
        return Attention(dim, num_heads, rel_size=window_size or grid)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Attention inside zero-padded windows, or over the whole grid (``window_size=0``)."""
        if not self.window_size:
            return self.attn(x)
        b, h, w, _ = x.shape
        return _from_windows(self.attn(_to_windows(x, self.window_size)), self.window_size, b, h, w)


class ImageEncoderViT(ViTImageEncoder):
    """(B, 3, S, S) normalised image → (B, out_chans, S/p, S/p) embeddings."""

    spatial_dims, patch_embed_cls, block_cls, conv_cls, norm_cls = 2, PatchEmbed, Block, nn.Conv2d, LayerNorm2d
