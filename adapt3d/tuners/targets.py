"""Readable adapter target names per core, resolved to module names."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from torch import nn

from adapt3d.config import nearest_key_message
from adapt3d.errors import ConfigError
from adapt3d.registry import Registry


@dataclass(frozen=True)
class TargetTable:
    """Named groups of modules of one core (regexes fully matching module names).

    ``fused_qkv`` matches the fused q/k/v projections that ``qkv_slices="qv"`` can slice.
    """

    names: dict[str, str] = field(default_factory=dict)
    fused_qkv: str = ""


TARGET_TABLES: Registry[TargetTable] = Registry("adapter target table")

_DECODER = {
    "decoder.attn": r"mask_decoder\.transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|"
    r"cross_attn_image_to_token)|final_attn_token_to_image)",
    "decoder.qv": r"mask_decoder\.transformer\..*\.(q_proj|v_proj)",
    "decoder.mlp": r"mask_decoder\.transformer\.layers\.\d+\.mlp",
    "decoder.hypernet": r"mask_decoder\.output_hypernetworks_mlps\.\d+",
}


def _vit_table(proj: str) -> TargetTable:
    """The groups of a core with a ViT encoder (fused ``qkv``, output projection ``proj``) and SAM's decoder."""
    blocks = r"image_encoder\.blocks\.\d+"
    return TargetTable(
        names={
            "encoder.qkv": blocks + r"\.attn\.qkv",
            "encoder.proj": blocks + r"\.attn\." + proj,
            "encoder.attn": blocks + r"\.attn",
            "encoder.mlp": blocks + r"\.mlp",
            **_DECODER,
        },
        fused_qkv=blocks + r"\.attn\.qkv",
    )


TARGET_TABLES.register("sam-med3d", _vit_table("proj"))
# 2D SAM (as SAM-Med2D adapts it) has SAM-Med3D's module names: the same groups select its layers.
TARGET_TABLES.register("sam2d", TARGET_TABLES.get("sam-med3d"))
# SegVol's encoder is MONAI's ViT: its attention output projection is ``out_proj``.
TARGET_TABLES.register("segvol", _vit_table("out_proj"))


_INTERNAL = re.compile(r"(^|\.)(base_layer|lora_[A-Za-z_]+|adapt3d_branches)(\.|$)")


def _is_linear(module: nn.Module) -> bool:
    """A Linear layer, or an adapter layer (peft) wrapping one."""
    return isinstance(module, nn.Linear) or isinstance(getattr(module, "base_layer", None), nn.Linear)


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def resolve_targets(model: nn.Module, core_name: str, targets: tuple[str, ...] | list[str], *, linear: bool) -> list[str]:
    """Module names that ``targets`` select in ``model``.

    With ``linear`` (LoRA/DoRA), a selected module that is not a Linear layer stands for the
    Linear layers inside it; otherwise the selected modules themselves are returned.
    """
    table = TARGET_TABLES.get(core_name)
    modules = {n: m for n, m in model.named_modules() if not _INTERNAL.search(n)}  # adapters' own parts excluded
    chosen: list[str] = []
    for target in targets:
        if target in table.names:
            pattern = re.compile(table.names[target])
            hits = [n for n in modules if pattern.fullmatch(n)]
        elif _is_glob(target):
            hits = [n for n in modules if n and fnmatch.fnmatchcase(n, target)]
        else:
            raise ConfigError(
                nearest_key_message(target, list(table.names), f"adapter targets for {core_name}")
                + " (or a glob over module names, e.g. image_encoder.blocks.*.attn.qkv)"
            )
        if not hits:
            raise ConfigError(f"adapter target {target!r} matches no module of the {core_name} core")
        for name in hits:
            if linear and not _is_linear(modules[name]):
                inner = [f"{name}.{n}" for n, m in modules[name].named_modules() if n and f"{name}.{n}" in modules and _is_linear(m)]
                if not inner:
                    raise ConfigError(f"adapter target {target!r}: {name} holds no Linear layer for LoRA")
                chosen.extend(inner)
            else:
                chosen.append(name)
    return sorted(dict.fromkeys(chosen))


def fused_qkv_names(core_name: str, names: list[str]) -> list[str]:
    """Those of ``names`` that are fused q/k/v projections of the core."""
    pattern = TARGET_TABLES.get(core_name).fused_qkv
    return [n for n in names if pattern and re.fullmatch(pattern, n)]
