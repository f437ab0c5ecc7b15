"""The 2D SAM model: configuration, module, input preprocessing, and architecture inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from adapt3d.cores.sam2d.image_encoder import ImageEncoderViT
from adapt3d.cores.sam2d.mask_decoder import MaskDecoder
from adapt3d.cores.sam2d.prompt_encoder import PromptEncoder
from adapt3d.cores.sam_base import SamConfig, SamCore
from adapt3d.cores.sam_med3d.model import attention_geometry
from adapt3d.cores.sam_med3d.model import infer_config as infer_shared_fields

#: SAM's RGB normalisation of 0–255 inputs (segment-anything ``Sam.pixel_mean/pixel_std``).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Sam2DConfig(SamConfig):
    """Architecture of a 2D SAM core. The defaults are SAM ViT-B (``sam_vit_b_01ec64.pth``)."""

    def check_prompt_dim(self) -> None:
        if self.prompt_dim % 8:
            raise ValueError(f"prompt_dim {self.prompt_dim} must be a multiple of 8 (decoder upscaling channels)")
        if (self.prompt_dim // 2) % self.decoder_heads:
            raise ValueError(f"decoder_heads {self.decoder_heads} must divide prompt_dim/2 = {self.prompt_dim // 2}")


class Sam2D(SamCore):
    """Segment Anything with the official ``image_encoder`` / ``prompt_encoder`` / ``mask_decoder``."""

    config_cls, spatial_dims = Sam2DConfig, 2
    image_encoder_cls, prompt_encoder_cls, mask_decoder_cls = ImageEncoderViT, PromptEncoder, MaskDecoder

    def prompt_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """SAM takes points and box corners as (x, y) = (column, row) of the model input."""
        return coords.flip(-1)


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
    grid = out["image_size"] // out["patch_size"]
    out.update(attention_geometry(state, "rel_pos_h", out["depth"], out["embed_dim"], grid))
    return out
