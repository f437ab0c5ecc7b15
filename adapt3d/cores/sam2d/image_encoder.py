"""SAM ViT image encoder (official key names): windowed attention with decomposed 2D relative positions."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from adapt3d.cores.common import MLPBlock
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


class Attention(nn.Module):
    """Multi-head self-attention over an (h, w) token grid with decomposed relative positions.

    The bias of query (i, j) for key (i', j') is ``q·Rh[i, i'] + q·Rw[j, j']`` with
    ``R[a, b] = rel_pos[a - b + n - 1]``; the tables must match the grid (no interpolation).
    """

    def __init__(self, dim: int, num_heads: int, rel_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

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


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size=0`` means global attention over the grid."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rel_size=window_size or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size:
            b, h, w, _ = y.shape
            y = _from_windows(self.attn(_to_windows(y, self.window_size)), self.window_size, b, h, w)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """(B, 3, S, S) normalised image → (B, out_chans, S/p, S/p) embeddings."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.patch_embed.proj.in_channels, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"image encoder expects (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() else blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
