"""SAM mask decoder: image embedding + prompt tokens → low-res mask logits and IoU predictions.

Its parts and key names are SAM-Med3D's (the two-way transformer works on token sequences, so it
is the same module) except the upscaling, which is 2D here.
"""

from __future__ import annotations

from torch import nn

from adapt3d.cores.common import output_upscaling
from adapt3d.cores.sam2d.common import LayerNorm2d
from adapt3d.cores.sam_med3d.mask_decoder import MaskDecoder3D


class MaskDecoder(MaskDecoder3D):
    """Predicts (B, 1 or 3, 4h, 4w) mask logits from an image embedding and prompt embeddings.

    One image embedding serves every prompt of the batch; B embeddings pair with B prompts.
    """

    def __init__(self, transformer_dim: int, **kwargs: int) -> None:
        super().__init__(transformer_dim, **kwargs)
        self.output_upscaling = output_upscaling(nn.ConvTranspose2d, LayerNorm2d, transformer_dim)
