"""SAM-Med3D ViT image encoder (official key names), with the exact fast windowed attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from adapt3d.cores.common import LayerNorm3d, MLPBlock
from adapt3d.cores.sam_med3d.attention import window_attention


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patches to tokens: (B, 1, D, H, W) → (B, d, h, w, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions (``qkv``, ``proj``, ``rel_pos_*``)."""

    def __init__(self, dim: int, num_heads: int, rel_size: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        pad = None
        if self.window_size and any(s % self.window_size for s in x.shape[1:4]):
            pad = self.qkv(x.new_zeros(1, x.shape[-1]))[0]  # what a padded (zero) token projects to
        rel = (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)
        return self.proj(window_attention(qkv, pad, rel, self.num_heads, self.window_size))


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size=0`` means global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rel_size=window_size or grid, window_size=window_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) normalised image → (B, out_chans, S/p, S/p, S/p) embeddings."""

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.patch_embed.proj.in_channels,) + (self.img_size,) * 3:
            raise ValueError(
                f"image encoder expects (B, {self.patch_embed.proj.in_channels}, {self.img_size}, "
                f"{self.img_size}, {self.img_size}), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
