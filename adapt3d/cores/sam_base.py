"""What the SAM-style cores share: the SAM architecture config, the module that assembles the
official ``image_encoder`` / ``prompt_encoder`` / ``mask_decoder`` from it, and the decoder call.

SAM-Med3D (3D) and 2D SAM are :class:`SamCore` subclasses that name their component classes and
number of spatial dimensions; SegVol (MONAI encoder, text tower) shares :func:`decoder_options`
and :func:`run_mask_decoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM-style ViT core. The defaults are SAM ViT-B's; subclasses override the
    fields their release differs in and check ``prompt_dim`` (:meth:`check_prompt_dim`)."""

    image_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide embed_dim {self.embed_dim}")
        self.check_prompt_dim()
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(f"global_attn_indexes {self.global_attn_indexes} must lie in [0, depth={self.depth})")

    def check_prompt_dim(self) -> None:
        """Raise ValueError if ``prompt_dim`` (or the decoder heads) do not suit the core."""
        raise NotImplementedError

    @property
    def grid(self) -> int:
        """Tokens per axis of the image embedding."""
        return self.image_size // self.patch_size


def decoder_options(config: Any) -> dict[str, int]:
    """Mask-decoder keyword arguments (beyond ``transformer_dim``) from a core config."""
    return {
        "num_multimask_outputs": config.num_multimask_outputs,
        "iou_head_hidden_dim": config.iou_head_hidden_dim,
        "transformer_depth": config.decoder_depth,
        "transformer_heads": config.decoder_heads,
        "transformer_mlp_dim": config.decoder_mlp_dim,
    }


def run_mask_decoder(
    core: nn.Module,
    embeddings: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    multimask_output: bool,
    **extra: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``core.mask_decoder`` on image embeddings and prompt embeddings (with the prompt encoder's
    dense positional encoding): low-res mask logits and IoU predictions. ``extra`` (SegVol's
    ``text_embedding``) is passed on."""
    return core.mask_decoder(
        image_embeddings=embeddings,
        image_pe=core.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        **extra,
    )


class SamCore(nn.Module):
    """A SAM-style core with the official sub-modules ``image_encoder``, ``prompt_encoder`` and
    ``mask_decoder`` (built in that order), for a square (2D) or cubic (3D) input.

    Subclasses set ``config_cls``, ``spatial_dims`` and the three component classes.
    """

    config_cls: type[SamConfig]
    spatial_dims: int
    image_encoder_cls: type[nn.Module]
    prompt_encoder_cls: type[nn.Module]
    mask_decoder_cls: type[nn.Module]

    def __init__(self, config: SamConfig | None = None) -> None:
        super().__init__()
        cfg = config or self.config_cls()
        self.config = cfg
        self.image_encoder = self.image_encoder_cls(
            img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
            depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, out_chans=cfg.prompt_dim,
            window_size=cfg.window_size, global_attn_indexes=tuple(cfg.global_attn_indexes),
        )
        self.prompt_encoder = self.prompt_encoder_cls(
            embed_dim=cfg.prompt_dim,
            image_embedding_size=(cfg.grid,) * self.spatial_dims,
            input_image_size=(cfg.image_size,) * self.spatial_dims,
            mask_in_chans=cfg.mask_in_chans,
        )
        self.mask_decoder = self.mask_decoder_cls(transformer_dim=cfg.prompt_dim, **decoder_options(cfg))

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (a quarter of the input)."""
        return 4 * self.config.grid

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings of normalised (B, in_chans, S, …) inputs."""
        return self.image_encoder(images)

    def prompt_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Array-order coordinates (…, dims) in the prompt encoder's own axis order."""
        return coords

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
        boxes: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, 1 or 3, S/4, …) and IoU predictions.

        As for every adapt3d core, ``points`` (B, N, dims) are pixel or voxel indices of the model
        input in array order, ``labels`` (B, N) 1 positive / 0 negative / -1 padding;
        ``mask_logits`` (B, 1, S/4, …) are the previous low-res logits, fed back; ``boxes``
        (B, 2·dims) are (first corner, last corner), for cores with box embeddings (2D SAM);
        ``prompt_tokens`` (B, T, prompt_dim) are appended to the sparse prompt embeddings (learned
        class prompts, :mod:`adapt3d.auto`; alone they make an automatic prompt).
        """
        dims = self.spatial_dims
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (self.prompt_coords(points), labels),
            boxes=None if boxes is None else self.prompt_coords(boxes.view(-1, 2, dims)).reshape(-1, 2 * dims),
            masks=mask_logits,
        )
        if prompt_tokens is not None:
            bs = max(sparse.shape[0], prompt_tokens.shape[0])
            sparse = torch.cat([sparse.expand(bs, -1, -1), prompt_tokens.to(sparse.dtype).expand(bs, -1, -1)], dim=1)
            dense = dense.expand(bs, *dense.shape[1:])
        return run_mask_decoder(self, embeddings, sparse, dense, multimask_output)
