"""The SAM-Med3D model: configuration, module, and architecture inference from a state dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from adapt3d.cores.sam_med3d.image_encoder import ImageEncoderViT3D
from adapt3d.cores.sam_med3d.mask_decoder import MaskDecoder3D
from adapt3d.cores.sam_med3d.prompt_encoder import PromptEncoder3D


@dataclass(frozen=True)
class SamMed3DConfig:
    """Architecture of a SAM-Med3D core. The defaults are the released "turbo" (vit_b_ori) model."""

    image_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    prompt_dim: int = 384
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
        if self.prompt_dim % 3:
            raise ValueError(f"prompt_dim {self.prompt_dim} must be a multiple of 3 (3D Fourier features)")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError(f"global_attn_indexes {self.global_attn_indexes} must lie in [0, depth={self.depth})")

    @property
    def grid(self) -> int:
        """Tokens per axis of the image embedding."""
        return self.image_size // self.patch_size


class SamMed3D(nn.Module):
    """SAM-Med3D with the official sub-modules ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

    core_name = "sam-med3d"

    def __init__(self, config: SamMed3DConfig | None = None) -> None:
        super().__init__()
        cfg = config or SamMed3DConfig()
        self.config = cfg
        g = cfg.grid
        self.image_encoder = ImageEncoderViT3D(
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
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=cfg.prompt_dim,
            image_embedding_size=(g, g, g),
            input_image_size=(cfg.image_size,) * 3,
            mask_in_chans=cfg.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder3D(
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
        """Image embeddings of normalised (B, 1, S, S, S) crops."""
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, 1, S/4, S/4, S/4) and IoU predictions for clicks in crop voxels.

        ``points`` (B, N, 3) are voxel indices of the crop in array order, ``labels`` (B, N) are
        1 (positive) / 0 (negative); ``mask_logits`` are the previous low-res logits, fed back.
        """
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (points, labels), boxes=None, masks=mask_logits
        )
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )


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
    rel = [state.get(f"image_encoder.blocks.{i}.attn.rel_pos_d") for i in range(depth)]
    if all(r is not None for r in rel):
        out["num_heads"] = embed_dim // int(rel[0].shape[1])
        sizes = [(int(r.shape[0]) + 1) // 2 for r in rel]
        out["global_attn_indexes"] = tuple(i for i, s in enumerate(sizes) if s == grid)
        windows = [s for s in sizes if s != grid]
        if windows:
            out["window_size"] = windows[0]
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


def config_dict(config: SamMed3DConfig) -> dict:
    """Plain-dict form of a config (tuples as lists), safe to store in checkpoints and JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
