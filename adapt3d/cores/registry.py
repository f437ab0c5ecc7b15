"""Core registry, ``load_core`` and ``save_core``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt3d.atomic import atomic_file
from adapt3d.config import build_dataclass
from adapt3d.cores.checkpoint import load_strict, read_checkpoint, strip_prefix, tensor_dict
from adapt3d.cores.contract import CoreContract
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.registry import Registry


@dataclass(frozen=True)
class CoreSpec:
    """How to build, recognise and (de)serialise one foundation model, and its contract."""

    name: str
    description: str
    config_cls: type
    model_cls: type[nn.Module]
    signature_key: str  # a key every checkpoint of this core has ...
    state_keys: tuple[str, ...]  # wrapper keys that hold the state dict, tried in order
    prefixes: tuple[str, ...]  # key prefixes stripped when every key carries them
    infer_config: Callable[[dict[str, torch.Tensor]], dict]
    to_official: Callable[[dict[str, torch.Tensor], dict], Any]  # (state, adapt3d meta) → official object
    contract: CoreContract  # what the core takes and how every verb runs it (adapt3d.cores.contract)
    signature_dims: int | None = None  # ... with this many dimensions (tells 3D from 2D SAM apart)

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        """Whether a state dict has this core's signature tensor."""
        t = state.get(self.signature_key)
        return t is not None and (self.signature_dims is None or t.dim() == self.signature_dims)


CORES: Registry[CoreSpec] = Registry("core")


def register_core(spec: CoreSpec) -> CoreSpec:
    """Add a core to the registry (used by each core's package)."""
    CORES.register(spec.name, spec)
    return spec


def core_spec(model: nn.Module) -> CoreSpec:
    """The spec of a core module (or of the core inside an adapted model): the registered spec
    whose ``model_cls`` it is an instance of (the most derived one)."""
    core = getattr(model, "core", model)
    found = [CORES.get(n) for n in CORES.names() if isinstance(core, CORES.get(n).model_cls)]
    if not found:
        raise ConfigError(f"{type(core).__name__} is not a registered core; register it with adapt3d.cores.register_core")
    return max(found, key=lambda spec: len(spec.model_cls.__mro__))


def _state_of(spec: CoreSpec, obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = tensor_dict(obj, path, keys=spec.state_keys)
    for prefix in spec.prefixes:
        state = strip_prefix(state, prefix)
    return state


def _recognise(spec: CoreSpec, obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = _state_of(spec, obj, path)
    if spec.matches(state):
        return state
    for other in (CORES.get(n) for n in CORES.names() if n != spec.name):
        try:
            if other.matches(_state_of(other, obj, path)):
                raise CheckpointError(f"{path}: this is a {other.name} checkpoint, not {spec.name} (use core {other.name!r})")
        except CheckpointError as exc:
            if "checkpoint, not" in str(exc):
                raise
    raise CheckpointError(f"{path}: not a {spec.name} checkpoint (no {spec.signature_key!r} among its {len(state)} tensors)")


def load_core(
    name: str = "sam-med3d",
    checkpoint: str | os.PathLike | None = None,
    *,
    trainable: bool = False,
    **arch_overrides: Any,
) -> nn.Module:
    """Build core ``name``; load ``checkpoint`` strictly (official training checkpoint, bare state
    dict or safetensors). The architecture is read from the checkpoint's tensor shapes (and adapt3d
    metadata), then ``arch_overrides`` apply. Parameters are frozen unless ``trainable``.
    """
    spec = CORES.get(name)
    arch: dict[str, Any] = {}
    state = None
    stored = None
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        obj = read_checkpoint(path)
        state = _recognise(spec, obj, path)
        arch.update(spec.infer_config(state))
        meta = obj.get("adapt3d") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            if meta.get("core", name) != name:
                raise CheckpointError(f"{path}: this is a {meta['core']} checkpoint, not {name}")
            arch.update(meta.get("config", {}))
            if meta.get("preprocessing") is not None:
                stored = Preprocessing.from_dict(meta["preprocessing"], where=f"{path}: adapt3d metadata 'preprocessing'")
    arch.update(arch_overrides)
    config = build_dataclass(spec.config_cls, arch, where=f"{name} architecture")
    model = spec.model_cls(config)
    if state is not None:
        load_strict(model, state, path)
    model.requires_grad_(trainable)
    model.eval()
    model.checkpoint_path = str(path) if path is not None else None
    model.preprocessing = (stored or spec.contract.preprocessing).with_image_size(model.image_size)
    return model


def core_preprocessing(model: nn.Module) -> Preprocessing:
    """The preprocessing ``model`` carries, else its spec's default at its window size."""
    carried = getattr(model, "preprocessing", None)
    if isinstance(carried, Preprocessing):
        return carried
    return core_spec(model).contract.preprocessing.with_image_size(model.image_size)


def core_config_dict(model: nn.Module) -> dict:
    """The model's architecture as plain JSON-able values."""
    cfg = getattr(model, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{type(model).__name__} carries no architecture config")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def save_core(model: nn.Module, path: str | os.PathLike, *, fmt: str = "official", state: dict | None = None) -> Path:
    """Write the core's weights: ``official`` (the core's own checkpoint layout) or ``safetensors``.

    Where the format allows, adapt3d metadata (core name, architecture, preprocessing) is stored
    too, so a small core reloads without flags and keeps its spacing and normalisation.
    ``state`` replaces the model's own state dict (e.g. merged adapter weights).
    """
    spec = core_spec(model)
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    meta = {"core": spec.name, "config": core_config_dict(model), "preprocessing": core_preprocessing(model).to_dict()}
    with atomic_file(path) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={"adapt3d": json.dumps(meta)})
        elif fmt == "official":
            torch.save(spec.to_official(tensors, meta), str(tmp))
        else:
            raise ConfigError(f"unknown checkpoint format {fmt!r}; valid: official, safetensors")
    return path


def core_fingerprint(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """Short SHA-256 over the core's tensors (names, shapes, bytes): identifies a core's weights."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d tensors too
    return h.hexdigest()[:16]
