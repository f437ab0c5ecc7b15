"""Building blocks shared by the SAM-style cores (names match the official state-dict keys)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (``lin1``, ``lin2``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.0`` … ``layers.N-1``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


def mask_downscaling(
    conv: type[nn.Module], norm: Callable[[int], nn.Module], mask_in_chans: int, embed_dim: int
) -> nn.Sequential:
    """The prompt encoder's ``mask_downscaling``: low-res mask logits (1 channel) → ``embed_dim`` at 1/4."""
    return nn.Sequential(
        conv(1, mask_in_chans // 4, kernel_size=2, stride=2),
        norm(mask_in_chans // 4),
        nn.GELU(),
        conv(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
        norm(mask_in_chans),
        nn.GELU(),
        conv(mask_in_chans, embed_dim, kernel_size=1),
    )


def output_upscaling(conv_transpose: type[nn.Module], norm: Callable[[int], nn.Module], dim: int) -> nn.Sequential:
    """The mask decoder's ``output_upscaling``: ``dim`` channels → ``dim // 8`` at 4× the resolution."""
    return nn.Sequential(
        conv_transpose(dim, dim // 4, kernel_size=2, stride=2),
        norm(dim // 4),
        nn.GELU(),
        conv_transpose(dim // 4, dim // 8, kernel_size=2, stride=2),
        nn.GELU(),
    )


class RelPosAttention(nn.Module):
    """Parameters of SAM's ViT self-attention: fused ``qkv``, output ``proj``, and a decomposed
    relative-position table ``rel_pos_<axis>`` (2·rel_size − 1 rows) for each grid axis in ``axes``."""

    axes: str

    def __init__(self, dim: int, num_heads: int, rel_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        for axis in self.axes:
            setattr(self, f"rel_pos_{axis}", nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block (``norm1``, ``attn``, ``norm2``, ``mlp``); ``window_size=0`` means global.

    Subclasses build the attention (:meth:`make_attention`) and may route tokens to it (:meth:`attend`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = self.make_attention(dim, num_heads, window_size, grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def make_attention(self, dim: int, num_heads: int, window_size: int, grid: int) -> nn.Module:
        """The block's self-attention module."""
        raise NotImplementedError

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of the normalised tokens."""
        return self.attn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTImageEncoder(nn.Module):
    """SAM's ViT over a cubic (3D) or square (2D) token grid: ``patch_embed`` + ``pos_embed``,
    ``blocks``, and a convolutional ``neck`` to ``out_chans`` channels.

    Subclasses set ``spatial_dims`` and the classes of the patch embedding, the blocks, and the
    neck's convolutions and norms. The defaults are SAM ViT-B's (1024² RGB input).
    """

    spatial_dims: int
    patch_embed_cls: type[nn.Module]
    block_cls: type[nn.Module]
    conv_cls: type[nn.Module]
    norm_cls: type[nn.Module]

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
        self.patch_embed = self.patch_embed_cls(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *(grid,) * self.spatial_dims, embed_dim))
        self.blocks = nn.ModuleList(
            self.block_cls(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            self.conv_cls(embed_dim, out_chans, kernel_size=1, bias=False),
            self.norm_cls(out_chans),
            self.conv_cls(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            self.norm_cls(out_chans),
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, …) normalised image → (B, out_chans, S/p, …) embeddings."""
        expected = (self.patch_embed.proj.in_channels,) + (self.img_size,) * self.spatial_dims
        if x.dim() != 2 + self.spatial_dims or tuple(x.shape[1:]) != expected:
            raise ValueError(f"image encoder expects (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() else blk(x)
        return self.neck(x.movedim(-1, 1))


class PromptEncoderBase(nn.Module):
    """SAM's prompt-encoder layout over a 2D or 3D grid: ``pe_layer``, ``point_embeddings``,
    ``not_a_point_embed``, ``mask_downscaling`` and ``no_mask_embed``.

    Subclasses set the Fourier-feature layer (:meth:`make_pe_layer`), the number of point
    embeddings, the convolution and norm classes of ``mask_downscaling``, and how points and
    boxes are embedded (:meth:`_embed_points`, :meth:`_embed_boxes`).
    """

    num_point_embeddings: int
    conv_cls: type[nn.Module]
    norm_cls: type[nn.Module]

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, ...],
        input_image_size: tuple[int, ...],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = self.make_pe_layer(embed_dim)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.mask_downscaling = mask_downscaling(self.conv_cls, self.norm_cls, mask_in_chans, embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def make_pe_layer(self, embed_dim: int) -> nn.Module:
        """The random Fourier-feature layer giving ``embed_dim`` features per coordinate."""
        raise NotImplementedError

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, C) point tokens, plus a padding token when ``pad`` (no box follows)."""
        raise NotImplementedError

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 2, C) box-corner tokens."""
        raise NotImplementedError

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, C) and dense (B, C, *grid) embeddings; B from the first prompt given."""
        bs = self.batch_size(None if points is None else points[0], boxes, masks)
        sparse = []
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        dense = self.no_mask_dense(bs) if masks is None else self.mask_downscaling(masks)
        return self.sparse_tokens(bs, sparse), dense

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, C, *grid)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    @staticmethod
    def batch_size(*prompts: torch.Tensor | None) -> int:
        """Batch size of the first prompt given (1 if none is)."""
        present = [t for t in prompts if t is not None]
        return present[0].shape[0] if present else 1

    def sparse_tokens(self, bs: int, parts: list[torch.Tensor]) -> torch.Tensor:
        """The (bs, N, C) sparse embeddings: ``parts`` concatenated (N = 0 without any)."""
        weight = self.no_mask_embed.weight
        return torch.cat([weight.new_empty((bs, 0, self.embed_dim)), *parts], dim=1)

    def no_mask_dense(self, bs: int) -> torch.Tensor:
        """Dense embeddings without a mask prompt: ``no_mask_embed`` at every grid cell, (bs, C, *grid)."""
        cells = (1,) * len(self.image_embedding_size)
        return self.no_mask_embed.weight.reshape(1, -1, *cells).expand(bs, -1, *self.image_embedding_size)
