"""SAM-Med3D core (official state-dict layout; the released "turbo" model is the default config)."""

from adapt3d.cores.contract import CoreContract
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.cores.registry import CoreSpec, register_core
from adapt3d.cores.sam_med3d.model import SamMed3D, SamMed3DConfig, infer_config

SPEC = register_core(
    CoreSpec(
        name="sam-med3d",
        description="SAM-Med3D (ViT-B 3D encoder, 128³ crops at 1.5 mm, point prompts)",
        config_cls=SamMed3DConfig,
        model_cls=SamMed3D,
        signature_key="image_encoder.patch_embed.proj.weight",
        signature_dims=5,  # Conv3d patch embedding
        state_keys=("model_state_dict", "state_dict", "model"),
        prefixes=("module.", "model."),
        infer_config=infer_config,
        to_official=lambda state, meta: {"model_state_dict": state, "adapt3d": meta},
        contract=CoreContract(
            preprocessing=Preprocessing(image_size=128, spacing=(1.5, 1.5, 1.5), normalization="sam-med3d"),
            prompts=frozenset({"points", "mask", "tokens"}),
            inference="windows",  # crops grown from the clicks, with propagation (adapt3d.infer.whole_volume)
            evaluation="crop",  # one crop centred on the first click, mask feedback (adapt3d.evaluate.nclick)
            training="click-rounds",  # SAM-Med3D's iterative click rounds with mask feedback
        ),
    )
)

__all__ = ["SamMed3D", "SamMed3DConfig", "SPEC"]
