"""Inference with a core (and adapters): prompts in input-voxel coordinates, masks on the input grid."""

from adapt3d.infer.predictor import CropPredictor, PreparedCrop
from adapt3d.infer.resampling_policy import RESAMPLING, ResamplingRecord, working_spacing
from adapt3d.infer.whole_volume import WholeVolumeConfig, WholeVolumePrediction, WholeVolumePredictor

__all__ = [
    "CropPredictor",
    "PreparedCrop",
    "RESAMPLING",
    "ResamplingRecord",
    "WholeVolumeConfig",
    "WholeVolumePrediction",
    "WholeVolumePredictor",
    "working_spacing",
]
