"""SegVol image encoder: MONAI's ViT with the "perceptron" patch embedding, in the release's key layout.

Keys: ``patch_embedding.position_embeddings`` (1, N, C), ``patch_embedding.patch_embeddings.1``
(Linear over flattened patches, ordered (p1 p2 p3 c)), ``blocks.i.{norm1, attn.qkv (no bias),
attn.out_proj, norm2, mlp.linear1, mlp.linear2}``, ``norm``. Current MONAI adds an unused
``norm_cross_attn`` LayerNorm to every block (the release, made with MONAI 0.9, has none): it is
removed. Forward (MONAI's): (B, 1, D, H, W) → ((B, N, C) tokens after the final norm, hidden states).
MONAI is imported lazily (slow to import).
"""

from __future__ import annotations

from torch import nn


def build_image_encoder(
    image_size: tuple[int, int, int],
    patch_size: tuple[int, int, int],
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_dim: int,
) -> nn.Module:
    """MONAI ``ViT`` (1 input channel, no classification head, no qkv bias) with the release's keys."""
    from monai.networks.nets import ViT

    vit = ViT(
        in_channels=1,
        img_size=image_size,
        patch_size=patch_size,
        hidden_size=embed_dim,
        mlp_dim=mlp_dim,
        num_layers=depth,
        num_heads=num_heads,
        proj_type="perceptron",
        classification=False,
        dropout_rate=0.0,
        qkv_bias=False,
    )
    for block in vit.blocks:
        if not getattr(block, "with_cross_attention", False) and hasattr(block, "norm_cross_attn"):
            del block.norm_cross_attn  # only used when cross-attention is on
    return vit
