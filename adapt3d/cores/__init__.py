"""Frozen foundation models, one sub-package per core, behind a registry."""

from adapt3d.cores import sam2d, sam_med3d, segvol  # noqa: F401  (importing a core registers it)
from adapt3d.cores.contract import PROMPT_KINDS, CoreContract
from adapt3d.cores.registry import CORES, CoreSpec, core_fingerprint, core_spec, load_core, register_core, save_core

__all__ = [
    "CORES", "PROMPT_KINDS", "CoreContract", "CoreSpec", "core_fingerprint", "core_spec", "load_core", "register_core", "save_core",
]
