"""SegVol core (the release's state-dict layout; the released model is the default config).

Release layout: a plain state dict whose keys carry ``model.`` (the HF ``SegVolModel`` wrapper);
training checkpoints hold ``{'model': {'module.' + key: ...}, 'optimizer': ..., 'epoch': ...}``.
"""

from adapt3d.cores.contract import CoreContract
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.cores.registry import CoreSpec, register_core
from adapt3d.cores.segvol.model import SegVol, SegVolConfig, infer_config
from adapt3d.cores.segvol.tokenizer import default_tokenizer
from adapt3d.cores.segvol.text_encoder import PROMPT_TEMPLATES, check_class_names, load_tokenizer, prompt_sentence
from adapt3d.cores.segvol.zoom import ZoomResult, zoom_out_zoom_in

SPEC = register_core(
    CoreSpec(
        name="segvol",
        description="SegVol (MONAI ViT-B encoder on 32×256×256, point/box/text prompts, zoom-out-zoom-in)",
        config_cls=SegVolConfig,
        model_cls=SegVol,
        signature_key="image_encoder.patch_embedding.position_embeddings",
        state_keys=("model", "state_dict", "model_state_dict"),
        prefixes=("module.", "model."),
        infer_config=infer_config,
        to_official=lambda state, meta: {"model." + k: v for k, v in state.items()},
        contract=CoreContract(
            preprocessing=Preprocessing(image_size=(32, 256, 256), spacing=None, normalization="segvol"),  # native spacing
            prompts=frozenset({"points", "boxes", "text"}),  # the released mask-prompt layers were never trained
            inference="zoom",  # zoom-out-zoom-in (adapt3d.cores.segvol.zoom)
            evaluation="zoom",  # a fresh zoom-out-zoom-in per click count; 0 clicks = the class name alone
            training="prompt-rounds",  # class-name text with points and/or a box, no mask feedback
        ),
    )
)

__all__ = [
    "PROMPT_TEMPLATES",
    "SPEC",
    "SegVol",
    "SegVolConfig",
    "ZoomResult",
    "check_class_names",
    "default_tokenizer",
    "load_tokenizer",
    "prompt_sentence",
    "zoom_out_zoom_in",
]
