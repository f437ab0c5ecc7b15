"""2D Segment Anything core (official ``sam_vit_b_01ec64.pth`` layout), evaluated slice by slice.

Its checkpoint format is the release's: a plain state dict (no wrapper, no metadata), so an
exported or merged sam2d loads with ``segment_anything.build_sam_vit_b(checkpoint=...)``. The
decoder's head count is not readable from tensor shapes: cores with other than 8 decoder heads
need ``decoder_heads=`` when loaded from that format (safetensors exports carry it).

No single key tells a SAM checkpoint from a SAM-Med3D one (SAM's keys are SAM-Med3D's without
``rel_pos_d``, plus the box-corner point embeddings that SegVol has too): a checkpoint of the
other SAM is refused by the strict load or by its architecture, not by name.
"""

from adapt3d.cores.contract import CoreContract
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.cores.registry import CoreSpec, register_core
from adapt3d.cores.sam2d.model import (
    PIXEL_MEAN,
    PIXEL_STD,
    Sam2D,
    Sam2DConfig,
    infer_config,
    preprocess,
)

SPEC = register_core(
    CoreSpec(
        name="sam2d",
        description="Segment Anything (2D ViT-B, 1024² RGB input, point/box/mask prompts), applied slice by slice",
        config_cls=Sam2DConfig,
        model_cls=Sam2D,
        signature_key="image_encoder.patch_embed.proj.weight",
        signature_dims=4,  # Conv2d patch embedding
        state_keys=("model", "state_dict", "model_state_dict"),
        prefixes=("module.", "model."),
        infer_config=infer_config,
        to_official=lambda state, meta: dict(state),
        contract=CoreContract(
            preprocessing=Preprocessing(image_size=1024, spacing=None, normalization="sam2d"),  # native slices, SAM pixel mean/std
            prompts=frozenset({"points", "boxes", "mask", "tokens"}),
            evaluation="slicewise",  # the N-click protocol on the object's slices (a 2D baseline: not trained, no predict)
        ),
    )
)

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "SPEC", "Sam2D", "Sam2DConfig", "infer_config", "preprocess"]
