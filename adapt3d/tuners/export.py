"""Export: merged official-format weights, or core+adapter weights when a method cannot merge."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from adapt3d.atomic import atomic_file
from adapt3d.config import build_dataclass
from adapt3d.cores import CORES, save_core
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.cores.registry import core_config_dict, core_preprocessing
from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.tuners.config import AdapterConfig
from adapt3d.tuners.io import save_adapter
from adapt3d.tuners.model import AdaptedModel


@dataclass(frozen=True)
class ExportResult:
    """What ``export_merged`` wrote: ``merged`` False means core+adapter weights in adapt3d format."""

    path: Path
    merged: bool
    message: str


def _plain_core_state(model: AdaptedModel) -> dict[str, torch.Tensor]:
    """The core's own weights under their official names (peft's ``base_layer`` indirection removed)."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in model.core.state_dict().items()
        if ".lora_" not in k and "adapt3d_branches" not in k
    }


def merged_state(model: AdaptedModel, name: str) -> dict[str, torch.Tensor]:
    """Core weights with adapter ``name`` folded in (LoRA/DoRA via peft's merge; full as is)."""
    tuner = model.tuner
    if tuner.family == "full":
        return {k: v.detach().clone() for k, v in model.core.state_dict().items()}
    spec = CORES.get(model.core_name)
    fresh = spec.model_cls(model.config)
    fresh.load_state_dict(_plain_core_state(model), strict=True)
    if tuner.family == "none":
        return fresh.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, Path(tmp) / "adapter", name)
        peft_model = PeftModel.from_pretrained(fresh, str(Path(tmp) / "adapter"))
        merged = peft_model.merge_and_unload()
    return merged.state_dict()


#: Checkpoint format of an export, by the output file's ending (.bin: SegVol's release name).
FORMAT_BY_ENDING = {".safetensors": "safetensors", ".pth": "official", ".pt": "official", ".bin": "official"}


def format_for(out: str | os.PathLike, fmt: str | None = None) -> str:
    """The checkpoint format output ``out`` asks for by its ending; ``fmt``, when given, must agree.

    ``.safetensors`` → safetensors, ``.pth``/``.pt``/``.bin`` → the core's official torch format; any other
    ending, or a ``fmt`` that disagrees with it, is a :class:`ConfigError`.
    """
    ending = Path(out).suffix
    if ending not in FORMAT_BY_ENDING:
        raise ConfigError(f"{out}: the ending decides the format: use .safetensors (safetensors) or .pth/.pt/.bin (official torch format)")
    wanted = FORMAT_BY_ENDING[ending]
    if fmt is not None and fmt != wanted:
        raise ConfigError(f"{out}: format {fmt!r} disagrees with the ending {ending!r} ({wanted}); change one of them")
    return wanted


def export_path(model: AdaptedModel, out: str | os.PathLike) -> Path:
    """Where ``export_merged`` writes for ``out``: ``out`` itself, or ``<stem>.adapt3d.safetensors``
    beside it for methods that cannot merge."""
    out = Path(out)
    if model.tuner.mergeable or model.tuner.family == "none":
        return out
    return out.with_name(out.name.split(".")[0] + ".adapt3d.safetensors")


def export_merged(
    model: AdaptedModel, out: str | os.PathLike, *, name: str | None = None, fmt: str | None = None
) -> ExportResult:
    """Write the adapted model as core weights loadable by the original model code.

    LoRA, DoRA and full fine-tuning merge into official-format weights; the format follows the
    ending of ``out`` (:func:`format_for`; ``fmt`` "official" or "safetensors", when given, must
    agree with it). Bottleneck adapters add layers the original code does not have: they are
    written with the core as adapt3d safetensors (``load_exported`` reads them) and the result
    says so.
    """
    name = name or model.active or next(iter(model.configs))
    fmt = format_for(out, fmt)
    path = export_path(model, out)
    if path == Path(out):
        state = merged_state(model, name)
        path = save_core(model.core, out, fmt=fmt, state=state)
        return ExportResult(path, True, f"wrote merged {model.core_name} weights ({fmt}) to {path}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.core.state_dict().items()}
    meta = {"core": model.core_name, "core_config": core_config_dict(model.core), "adapter": model.configs[name].to_dict(),
            "preprocessing": model.preprocessing.to_dict()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"adapt3d_export": json.dumps(meta)})
    message = (
        f"the {model.configs[name].method} method adds layers that cannot be folded into {model.core_name}'s weights, "
        f"so no official checkpoint can be written; wrote core+adapter weights in adapt3d format to {path} "
        "(load with adapt3d.tuners.load_exported)"
    )
    return ExportResult(path, False, message)


def load_exported(path: str | os.PathLike) -> AdaptedModel:
    """Rebuild the core+adapter model written by ``export_merged`` for a non-mergeable method."""
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["adapt3d_export"])
        tensors = load_file(str(path))
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not an adapt3d core+adapter export") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable export ({str(exc).splitlines()[0]})") from None
    spec = CORES.get(meta["core"])
    core = spec.model_cls(build_dataclass(spec.config_cls, meta["core_config"], str(path)))
    model = AdaptedModel(core, fingerprint="exported")
    model.add(AdapterConfig.from_dict(meta["adapter"], where=str(path)))
    model.core.load_state_dict(tensors, strict=True)
    model.core.preprocessing = (
        Preprocessing.from_dict(meta["preprocessing"], where=f"{path}: preprocessing") if "preprocessing" in meta
        else core_preprocessing(model.core)
    )
    model.set_trainable(None)
    return model
