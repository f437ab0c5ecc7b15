"""The 2D SAM model: configuration, module, input preprocessing, and architecture inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.cores.sam2d.image_encoder import ImageEncoderViT
from adapt3d.cores.sam2d.mask_decoder import MaskDecoder
from adapt3d.cores.sam2d.prompt_encoder import PromptEncoder
from adapt3d.cores.sam_med3d.model import infer_config as infer_shared_fields

#: SAM's RGB normalisation of 0–255 inputs (segment-anything ``Sam.pixel_mean/pixel_std``).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Sam2DConfig:
    """Architecture of a 2D SAM core. The defaults are SAM ViT-B (``sam_vit_b_01ec64.pth``)."""

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
        if self.prompt_dim % 8:
            raise ValueError(f"prompt_dim {self.prompt_dim} must be a multiple of 8 (decoder upscaling channels)")
        if (self.prompt_dim // 2) % self.decoder_heads:
            raise ValueError(f"decoder_heads {self.decoder_heads} must divide prompt_dim/2 = {self.prompt_dim // 2}")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(f"global_attn_indexes {self.global_attn_indexes} must lie in [0, depth={self.depth})")

    @property
    def grid(self) -> int:
        """Tokens per side of the image embedding."""
        return self.image_size // self.patch_size


class Sam2D(nn.Module):
    """Segment Anything with the official ``image_encoder`` / ``prompt_encoder`` / ``mask_decoder``."""

    core_name = "sam2d"

    def __init__(self, config: Sam2DConfig | None = None) -> None:
        super().__init__()
        cfg = config or Sam2DConfig()
        self.config = cfg
        g = cfg.grid
        self.image_encoder = ImageEncoderViT(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.prompt_dim,
            window_size=cfg.window_size,
            global_attn_indexes=tuple(cfg.global_attn_indexes),
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=cfg.prompt_dim,
            image_embedding_size=(g, g),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=cfg.prompt_dim,
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
            transformer_depth=cfg.decoder_depth,
            transformer_heads=cfg.decoder_heads,
            transformer_mlp_dim=cfg.decoder_mlp_dim,
        )

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (a quarter of the input)."""
        return 4 * self.config.grid

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings of normalised, padded (B, 3, S, S) images (see :func:`preprocess`)."""
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, 1 or 3, S/4, S/4) and IoU predictions.

        As for every adapt3d core, ``points`` (B, N, 2) are pixel indices of the model input in
        array order (row, column), ``labels`` (B, N) 1 positive / 0 negative / -1 padding;
        ``boxes`` (B, 4) are (row0, col0, row1, col1); ``mask_logits`` (B, 1, S/4, S/4) are the
        previous low-res logits, fed back. They are handed to SAM as (x, y) = (column, row).
        """
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (points.flip(-1), labels),
            boxes=None if boxes is None else boxes.view(-1, 2, 2).flip(-1).reshape(-1, 4),
            masks=mask_logits,
        )
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """SAM's input: (B, 3, h, w) RGB in [0, 255] (h, w ≤ S) normalised, zero-padded bottom/right to S×S."""
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    h, w = images.shape[-2:]
    if h > image_size or w > image_size:
        raise ValueError(f"image {h}×{w} is larger than the model input {image_size}×{image_size}; resize it first")
    return F.pad((images - mean) / std, (0, image_size - w, 0, image_size - h))


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """Architecture fields readable from tensor shapes (decoder heads are not; they keep their default).

    The layout shares its key names with SAM-Med3D, whose reader gives every field but the
    attention geometry; that comes from the 2D relative-position tables ``rel_pos_h``.
    """
    out = infer_shared_fields(state)
    if not out:
        return {}
    depth, grid = out["depth"], out["image_size"] // out["patch_size"]
    rel = [state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    if all(r is not None for r in rel):
        out["num_heads"] = out["embed_dim"] // int(rel[0].shape[1])
        sizes = [(int(r.shape[0]) + 1) // 2 for r in rel]
        out["global_attn_indexes"] = tuple(i for i, s in enumerate(sizes) if s == grid)
        windows = [s for s in sizes if s != grid]
        if windows:
            out["window_size"] = windows[0]
    return out
