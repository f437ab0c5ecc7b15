"""The SAM-Med3D model: configuration, module, and architecture inference from a state dict."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapt3d.cores.sam_base import SamConfig, SamCore
from adapt3d.cores.sam_med3d.image_encoder import ImageEncoderViT3D
from adapt3d.cores.sam_med3d.mask_decoder import MaskDecoder3D
from adapt3d.cores.sam_med3d.prompt_encoder import PromptEncoder3D


@dataclass(frozen=True)
class SamMed3DConfig(SamConfig):
    """Architecture of a SAM-Med3D core. The defaults are the released "turbo" (vit_b_ori) model."""

    image_size: int = 128
    in_chans: int = 1
    prompt_dim: int = 384

    def check_prompt_dim(self) -> None:
        if self.prompt_dim % 3:
            raise ValueError(f"prompt_dim {self.prompt_dim} must be a multiple of 3 (3D Fourier features)")


class SamMed3D(SamCore):
    """SAM-Med3D with the official sub-modules ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

    config_cls, spatial_dims = SamMed3DConfig, 3
    image_encoder_cls, prompt_encoder_cls, mask_decoder_cls = ImageEncoderViT3D, PromptEncoder3D, MaskDecoder3D


def attention_geometry(state: dict[str, torch.Tensor], table: str, depth: int, embed_dim: int, grid: int) -> dict:
    """``num_heads``, ``global_attn_indexes`` and ``window_size`` read from the relative-position
    tables ``table`` (e.g. ``rel_pos_d``) of every encoder block; {} if a block has none.

    A table has 2n - 1 rows of head_dim columns for attention over n tokens per axis: global
    blocks span the grid, windowed ones their window.
    """
    rel = [state.get(f"image_encoder.blocks.{i}.attn.{table}") for i in range(depth)]
    if not all(r is not None for r in rel):
        return {}
    sizes = [(int(r.shape[0]) + 1) // 2 for r in rel]
    out = {
        "num_heads": embed_dim // int(rel[0].shape[1]),
        "global_attn_indexes": tuple(i for i, s in enumerate(sizes) if s == grid),
    }
    windows = [s for s in sizes if s != grid]
    if windows:
        out["window_size"] = windows[0]
    return out


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """Architecture fields readable from tensor shapes (decoder heads are not; they keep their default)."""
    pe = "image_encoder.patch_embed.proj.weight"
    if pe not in state or "image_encoder.pos_embed" not in state:
        return {}
    embed_dim, in_chans, patch = (int(s) for s in state[pe].shape[:3])
    grid = int(state["image_encoder.pos_embed"].shape[1])
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    out: dict = {"embed_dim": embed_dim, "in_chans": in_chans, "patch_size": patch, "image_size": grid * patch}
    out["depth"] = depth
    out.update(attention_geometry(state, "rel_pos_d", depth, embed_dim, grid))
    lin1 = state.get("image_encoder.blocks.0.mlp.lin1.weight")
    if lin1 is not None:
        out["mlp_ratio"] = int(lin1.shape[0]) / embed_dim
    neck = state.get("image_encoder.neck.0.weight")
    if neck is not None:
        out["prompt_dim"] = int(neck.shape[0])
    mask_in = state.get("prompt_encoder.mask_downscaling.3.weight")
    if mask_in is not None:
        out["mask_in_chans"] = int(mask_in.shape[0])
    layers = {k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")}
    if layers:
        out["decoder_depth"] = len(layers)
    dec_mlp = state.get("mask_decoder.transformer.layers.0.mlp.lin1.weight")
    if dec_mlp is not None:
        out["decoder_mlp_dim"] = int(dec_mlp.shape[0])
    tokens = state.get("mask_decoder.mask_tokens.weight")
    if tokens is not None:
        out["num_multimask_outputs"] = int(tokens.shape[0]) - 1
    iou = state.get("mask_decoder.iou_prediction_head.layers.0.weight")
    if iou is not None:
        out["iou_head_hidden_dim"] = int(iou.shape[0])
    return out
