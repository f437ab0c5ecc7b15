"""adapt3d: adapt frozen 3D medical segmentation foundation models to new modalities."""

__version__ = "0.1.0"

from adapt3d.cores import load_core  # noqa: E402

__all__ = ["load_core", "__version__"]
