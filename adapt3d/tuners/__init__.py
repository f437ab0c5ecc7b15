"""Adapter methods on frozen cores: LoRA/DoRA (peft), bottleneck adapters, AdaptFormer, full, none."""

from adapt3d.tuners.config import METHOD_NAMES, AdapterConfig, load_adapter_config, save_adapter_config
from adapt3d.tuners.export import ExportResult, export_merged, load_exported, merged_state
from adapt3d.tuners.io import load_adapter, read_adapter_meta, save_adapter
from adapt3d.tuners.methods import TUNERS
from adapt3d.tuners.model import AdaptedModel, add_adapters, format_report
from adapt3d.tuners.routing import ModalityRouter
from adapt3d.tuners.targets import TARGET_TABLES, TargetTable, resolve_targets

__all__ = [
    "METHOD_NAMES",
    "ModalityRouter",
    "TARGET_TABLES",
    "TUNERS",
    "AdaptedModel",
    "AdapterConfig",
    "ExportResult",
    "TargetTable",
    "add_adapters",
    "export_merged",
    "format_report",
    "load_adapter",
    "load_adapter_config",
    "load_exported",
    "merged_state",
    "read_adapter_meta",
    "resolve_targets",
    "save_adapter",
    "save_adapter_config",
]
