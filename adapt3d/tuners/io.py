"""Saving and loading adapters: a peft directory (LoRA/DoRA) or adapt3d's own, plus ADAPTER.md."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from adapt3d import __version__
from adapt3d.atomic import atomic_dir
from adapt3d.cores import core_fingerprint
from adapt3d.cores.registry import core_config_dict
from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.tuners.card import write_card
from adapt3d.tuners.config import AdapterConfig
from adapt3d.tuners.model import AdaptedModel

META = "adapt3d_adapter.json"
WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


def _pick_name(model: AdaptedModel, name: str | None) -> str:
    if name is not None:
        if name not in model.configs:
            raise ConfigError(f"no adapter called {name!r}; attached: {', '.join(model.configs) or 'none'}")
        return name
    if model.active is not None:
        return model.active
    if len(model.configs) == 1:
        return next(iter(model.configs))
    raise ConfigError(f"several adapters are attached ({', '.join(model.configs)}): name the one to save")


def save_adapter(
    model: AdaptedModel,
    directory: str | os.PathLike,
    name: str | None = None,
    *,
    info: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write adapter ``name`` to ``directory``: weights, configs and an ``ADAPTER.md`` card.

    LoRA/DoRA directories are plain peft adapters (``peft.PeftModel.from_pretrained(core, dir)``
    loads them). ``info`` adds what the card should say about training data and metrics.
    """
    name = _pick_name(model, name)
    cfg = model.configs[name]
    tuner = model.tuner
    state = tuner.state(model.net, name)
    report = model.trainable_report() if model.active == name else None
    meta = {
        "format": 1,
        "adapt3d_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "core": model.core_name,
        "core_fingerprint": model.fingerprint,
        "core_checkpoint": getattr(model.core, "checkpoint_path", None),
        "core_config": core_config_dict(model.core),
        "config": cfg.to_dict(),
        "modules": model.modules_of.get(name, []),
        "adapter_parameters": int(sum(t.numel() for t in state.values())),
        "core_parameters": report["core_parameters"] if report else None,
        "info": info or {},
    }
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        if tuner.family == "peft":
            model.net.peft_config[name].save_pretrained(str(tmp))
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        meta["size_bytes"] = (tmp / WEIGHTS).stat().st_size
        (tmp / META).write_text(json.dumps(meta, indent=2))
        write_card(tmp / "ADAPTER.md", meta)
    return Path(directory)


def read_adapter_meta(directory: str | os.PathLike) -> dict:
    """The adapt3d metadata of an adapter directory, checking that its files are all there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: adapter directory not found")
    missing = [f for f in (META, WEIGHTS) if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: not a complete adapter directory (missing {', '.join(missing)})")
    try:
        meta = json.loads((directory / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / META}: corrupt adapter metadata ({exc})") from None
    for key in ("core", "core_fingerprint", "config"):
        if key not in meta:
            raise CheckpointError(f"{directory / META}: adapter metadata lacks {key!r}")
    if meta["config"].get("method") in ("lora", "dora") and not (directory / PEFT_CONFIG).is_file():
        raise CheckpointError(f"{directory}: not a complete adapter directory (missing {PEFT_CONFIG})")
    return meta


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None


def load_adapter(
    target: nn.Module,
    directory: str | os.PathLike,
    *,
    name: str | None = None,
    trainable: bool = False,
    allow_other_core: bool = False,
) -> AdaptedModel:
    """Load an adapter onto a core (a new :class:`AdaptedModel`) or beside others on an adapted model.

    The adapter must have been trained on this core: same core type and weights (fingerprint).
    ``allow_other_core`` accepts another core of the same architecture (e.g. a re-saved copy).
    """
    directory = Path(directory)
    meta = read_adapter_meta(directory)
    model = target if isinstance(target, AdaptedModel) else AdaptedModel(target)
    if meta["core"] != model.core_name:
        raise CheckpointError(f"{directory}: adapter is for a {meta['core']} core, not {model.core_name}")
    if meta["core_fingerprint"] != model.fingerprint and not allow_other_core:
        raise CheckpointError(
            f"{directory}: adapter was trained on core {meta['core_fingerprint']} "
            f"({meta.get('core_checkpoint') or 'unnamed'}); this core's weights are {model.fingerprint}"
        )
    cfg_values = dict(meta["config"])
    if name is not None:
        cfg_values["name"] = name
    cfg = AdapterConfig.from_dict(cfg_values, where=str(directory / META))
    state = _read_weights(directory / WEIGHTS)
    model.add(cfg)  # the loaded adapter becomes the active one
    model.tuner.load_state(model.net, cfg.name, state, directory)
    if not trainable:
        model.set_trainable(None)
    return model


def adapter_fingerprint(model: AdaptedModel, name: str) -> str:
    """Short hash of an adapter's tensors (for provenance records)."""
    return core_fingerprint(model.adapter_state(name))
