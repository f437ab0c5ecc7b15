"""Frozen foundation models, one sub-package per core, behind a registry."""

from adapt3d.cores import sam2d, sam_med3d, segvol  # noqa: F401  (importing a core registers it)
from adapt3d.cores.registry import CORES, CoreSpec, core_fingerprint, load_core, register_core, save_core

__all__ = ["CORES", "CoreSpec", "core_fingerprint", "load_core", "register_core", "save_core"]
