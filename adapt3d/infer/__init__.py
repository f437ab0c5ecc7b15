"""Inference with a core (and adapters): prompts in input-voxel coordinates, masks on the input grid."""

from adapt3d.infer.predictor import CropPredictor, PreparedCrop

__all__ = ["CropPredictor", "PreparedCrop"]
