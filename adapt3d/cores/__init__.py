"""Frozen foundation models, one sub-package per core, behind a registry."""

from adapt3d.cores import sam_med3d  # noqa: F401  (registers the core)
from adapt3d.cores.registry import CORES, CoreSpec, core_fingerprint, load_core, register_core, save_core

__all__ = ["CORES", "CoreSpec", "core_fingerprint", "load_core", "register_core", "save_core"]
