"""The SegVol model: configuration, module, and architecture inference from a state dict.

Coordinates (points, boxes) are voxel indices of the model input (B, 1, D, H, W) in array
order (d, h, w); SegVol's own data pipeline puts the volume's RAS z axis first: (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.cores.sam_base import decoder_options, run_mask_decoder
from adapt3d.cores.segvol.image_encoder import build_image_encoder
from adapt3d.cores.segvol.mask_decoder import MaskDecoder
from adapt3d.cores.segvol.prompt_encoder import PromptEncoder
from adapt3d.cores.segvol.text_encoder import TextEncoder

Text = str | Sequence[str] | torch.Tensor | None


@dataclass(frozen=True)
class SegVolConfig:
    """Architecture of a SegVol core. The defaults are the released model (ViT-B, 32×256×256 input)."""

    image_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_hidden_dim: int = 256
    text_vocab_size: int = 49408
    text_hidden_size: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_intermediate_size: int = 2048
    text_max_positions: int = 77

    def __post_init__(self) -> None:
        if len(self.image_size) != 3 or len(self.patch_size) != 3:
            raise ValueError(f"image_size {self.image_size} and patch_size {self.patch_size} need 3 values each")
        if any(s % p for s, p in zip(self.image_size, self.patch_size)):
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads or self.embed_dim % 16:
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of 16 and of num_heads {self.num_heads}")
        if (self.embed_dim // 2) % self.decoder_heads:
            raise ValueError(f"decoder_heads {self.decoder_heads} must divide embed_dim / 2 = {self.embed_dim // 2}")
        if self.text_hidden_size % self.text_heads:
            raise ValueError(f"text_heads {self.text_heads} must divide text_hidden_size {self.text_hidden_size}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens per axis of the image embedding."""
        return tuple(s // p for s, p in zip(self.image_size, self.patch_size))  # type: ignore[return-value]


class SegVol(nn.Module):
    """SegVol with the release's sub-modules ``image_encoder``, ``mask_decoder``, ``prompt_encoder``,
    ``text_encoder`` (state-dict keys of the release, without its ``model.`` prefix)."""


    def __init__(self, config: SegVolConfig | None = None) -> None:
        super().__init__()
        cfg = config or SegVolConfig()
        self.config = cfg
        self.image_encoder = build_image_encoder(
            cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim
        )
        self.mask_decoder = MaskDecoder(cfg.embed_dim, cfg.grid, **decoder_options(cfg))
        self.prompt_encoder = PromptEncoder(cfg.embed_dim, cfg.grid, cfg.image_size, cfg.mask_in_chans)
        self.text_encoder = TextEncoder(
            cfg.embed_dim, cfg.text_vocab_size, cfg.text_hidden_size, cfg.text_layers, cfg.text_heads,
            cfg.text_intermediate_size, cfg.text_max_positions,
        )

    @property
    def image_size(self) -> tuple[int, int, int]:
        return self.config.image_size

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """Size of the low-res mask logits (4× the embedding grid)."""
        return tuple(4 * g for g in self.config.grid)  # type: ignore[return-value]

    def set_tokenizer(self, tokenizer: object) -> None:
        """CLIP tokenizer (object or directory, e.g. SegVol's ``config/clip``) for class-name prompts."""
        self.text_encoder.set_tokenizer(tokenizer)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, C, g0, g1, g2) of (B, 1, D, H, W) volumes scaled to [0, 1]."""
        if images.dim() != 5 or tuple(images.shape[1:]) != (1, *self.config.image_size):
            raise ValueError(f"image encoder expects (B, 1, {', '.join(map(str, self.config.image_size))}), "
                             f"got {tuple(images.shape)}")
        tokens, _ = self.image_encoder(images)
        return tokens.transpose(1, 2).reshape(images.shape[0], -1, *self.config.grid)

    def encode_text(self, text: Text, modality: str = "CT", template: str | None = None) -> torch.Tensor | None:
        """Class name(s) → (B, C) text embeddings (a tensor passes through unchanged)."""
        if text is None or isinstance(text, torch.Tensor):
            return text
        return self.text_encoder(text, modality=modality, template=template)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
        *,
        boxes: torch.Tensor | None = None,
        text: Text = None,
        modality: str = "CT",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, 1, 4·g0, 4·g1, 4·g2) and IoU predictions.

        ``points`` (B, N, 3) and ``boxes`` (B, 6) = (d0, h0, w0, d1, h1, w1) are voxel indices of
        the model input in array order; ``labels`` (B, N) are 1 positive / 0 negative / -1 none.
        ``text`` is class name(s) (put into the ``modality`` template) or (B, C) text embeddings.
        ``mask_logits`` must be None: SegVol has no mask prompt.
        """
        if mask_logits is not None:
            raise ValueError("SegVol has no mask prompt: pass mask_logits=None (its contract has no mask prompt)")
        text_embedding = self.encode_text(text, modality)
        if boxes is not None and boxes.dim() == 2:
            boxes = boxes[:, None, :]
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (points, labels),
            boxes=boxes,
            masks=None,
            text_embedding=text_embedding,
        )
        return run_mask_decoder(self, embeddings, sparse, dense, multimask_output, text_embedding=text_embedding)

    def forward(
        self,
        image: torch.Tensor,
        text: Text = None,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Release test-mode call: logits (B, 1, D, H, W) at the input size (trilinear upsampling)."""
        low, _ = self.decode(
            self.encode(image),
            None if points is None else points[0],
            None if points is None else points[1],
            boxes=boxes,
            text=text,
        )
        return F.interpolate(low, size=tuple(image.shape[2:]), mode="trilinear", align_corners=False)


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct indices right after ``prefix`` (e.g. blocks of a ModuleList)."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _patch_from_volume(volume: int) -> tuple[int, int, int] | None:
    """Patch (p/4, p, p) as released (4×16×16), else cubic, of ``volume`` voxels; None if neither fits."""
    for depth_ratio in (4, 1):  # in-plane side / depth
        side = round((volume * depth_ratio) ** (1 / 3))
        for s in (side - 1, side, side + 1):
            if s > 0 and s % depth_ratio == 0 and (s // depth_ratio) * s * s == volume:
                return (s // depth_ratio, s, s)
    return None


_TEXT = "text_encoder.clip_text_model.text_model."
#: Config fields read from one dimension of one tensor: field → (key, dimension).
_SHAPE_FIELDS: dict[str, tuple[str, int]] = {
    "embed_dim": ("image_encoder.patch_embedding.position_embeddings", 2),
    "mlp_dim": ("image_encoder.blocks.0.mlp.linear1.weight", 0),
    "mask_in_chans": ("prompt_encoder.mask_downscaling.3.weight", 0),
    "decoder_mlp_dim": ("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0),
    "iou_head_hidden_dim": ("mask_decoder.iou_prediction_head.layers.0.weight", 0),
    "text_vocab_size": (_TEXT + "embeddings.token_embedding.weight", 0),
    "text_hidden_size": (_TEXT + "embeddings.token_embedding.weight", 1),
    "text_max_positions": (_TEXT + "embeddings.position_embedding.weight", 0),
    "text_intermediate_size": (_TEXT + "encoder.layers.0.mlp.fc1.weight", 0),
}
#: Config fields counted as the entries of a module list: field → key prefix.
_DEPTH_FIELDS = {
    "depth": "image_encoder.blocks.",
    "decoder_depth": "mask_decoder.transformer.layers.",
    "text_layers": _TEXT + "encoder.layers.",
}


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """Architecture fields readable from tensor shapes.

    Not stored in the release layout, hence rules: head counts give 64-d heads (as released; the
    decoder keeps 8 heads), and the patch is (p/4, p, p) as released, else cubic. adapt3d's
    safetensors files carry the exact config; otherwise override what differs.
    """
    out: dict = {f: int(state[k].shape[d]) for f, (k, d) in _SHAPE_FIELDS.items() if k in state}
    out.update({f: n for f, prefix in _DEPTH_FIELDS.items() if (n := _count(state, prefix))})
    tokens = state.get("mask_decoder.mask_tokens.weight")
    if tokens is not None:
        out["num_multimask_outputs"] = int(tokens.shape[0]) - 1
    for heads, dim in (("num_heads", "embed_dim"), ("text_heads", "text_hidden_size")):
        if dim in out:
            out[heads] = max(1, out[dim] // 64)
    norm = state.get("mask_decoder.output_upscaling.1.weight")
    patch = state.get("image_encoder.patch_embedding.patch_embeddings.1.weight")
    if norm is not None and patch is not None and norm.dim() == 4:
        patch_size = _patch_from_volume(int(patch.shape[1]))
        if patch_size is not None:
            out["patch_size"] = patch_size
            out["image_size"] = tuple(int(s) // 2 * p for s, p in zip(norm.shape[1:], patch_size))
    return out
