"""SAM-Med3D ViT image encoder (official key names), with the exact fast windowed attention."""

from __future__ import annotations

import torch
from torch import nn

from adapt3d.cores.common import LayerNorm3d, RelPosAttention, ViTBlock, ViTImageEncoder
from adapt3d.cores.sam_med3d.attention import resolve_backend


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patches to tokens: (B, 1, D, H, W) → (B, d, h, w, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class Attention(RelPosAttention):
    """Multi-head self-attention with decomposed relative positions (``qkv``, ``proj``, ``rel_pos_*``)."""

    axes = "dhw"

    def __init__(self, dim: int, num_heads: int, rel_size: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads, rel_size, qkv_bias)
        self.window_size = window_size
        self.attention_backend = "auto"  # see adapt3d.cores.sam_med3d.attention.ATTENTION_BACKENDS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        pad = None
        if self.window_size and any(s % self.window_size for s in x.shape[1:4]):
            pad = self.qkv(x.new_zeros(1, x.shape[-1]))[0]  # what a padded (zero) token projects to
        rel = (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)
        attend = resolve_backend(self.attention_backend, x.device)
        return self.proj(attend(qkv, pad, rel, self.num_heads, self.window_size))


class Block(ViTBlock):
    """Pre-norm transformer block; ``window_size=0`` means global attention."""

    def make_attention(self, dim: int, num_heads: int, window_size: int, grid: int) -> nn.Module:
        return Attention(dim, num_heads, rel_size=window_size or grid, window_size=window_size)


class ImageEncoderViT3D(ViTImageEncoder):
    """(B, 1, S, S, S) normalised image → (B, out_chans, S/p, S/p, S/p) embeddings."""

    spatial_dims, patch_embed_cls, block_cls, conv_cls, norm_cls = 3, PatchEmbed3D, Block, nn.Conv3d, LayerNorm3d

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
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, out_chans, window_size, global_attn_indexes
        )
