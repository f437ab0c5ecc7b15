"""Safe checkpoint reading: safetensors, or ``torch.load(weights_only=True)`` with a short allow-list.

Nothing in a checkpoint is ever executed: a pickle that names any global outside the allow-list
is refused before it is unpickled.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt3d.errors import CheckpointError

#: Globals a checkpoint may contain besides tensors and plain containers: the official
#: SAM-Med3D training checkpoints hold ``args`` (argparse.Namespace) and a MultiStepLR state
#: (its milestones are a collections.Counter).
SAFE_GLOBALS: list[Any] = [argparse.Namespace, collections.Counter]


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _pickle_globals(path: Path, allowed: list[Any]) -> list[str]:
    """Names of the globals a pickle (raw or inside a torch zip) would import beyond ``allowed`` —
    parsed, never run."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(name) if name else b""
        else:
            data = path.read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:
        return []
    ok = {_qualname(g) for g in allowed}
    return [n for n in dict.fromkeys(names) if n not in ok and not n.startswith(("torch.", "collections.OrderedDict"))]


def safe_torch_load(path: str | os.PathLike, allowed: list[Any] = SAFE_GLOBALS, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with ``allowed`` as the only extra globals, on the CPU.

    Anything else in the pickle is refused with a :class:`CheckpointError` naming the file and
    the globals, before any of it is unpickled.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter from torch
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        names = _pickle_globals(path, list(allowed)) or re.findall(r"GLOBAL (\S+)", text)
        if not names and "Unsupported global" not in text:
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise CheckpointError(f"{path}: not a readable {what} ({detail})") from None
        raise CheckpointError(
            f"{path}: refused to load: the pickle references objects outside the allow-list "
            f"({', '.join(dict.fromkeys(names)) or 'unknown'}); adapt3d never runs code from a {what} — "
            "re-save it as a plain state dict or safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable {what} ({first})") from None


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a ``.safetensors`` file or a torch checkpoint without executing any pickled code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return safe_torch_load(path)


def _read_safetensors(path: Path) -> dict[str, Any]:
    """Tensors of a safetensors file; adapt3d metadata, when present, under ``"adapt3d"``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    if "adapt3d" in meta:
        try:
            return {"model_state_dict": tensors, "adapt3d": json.loads(meta["adapt3d"])}
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: corrupt adapt3d metadata in safetensors header") from None
    return tensors


def tensor_dict(obj: Any, path: Path | str, *, keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Return the state dict inside ``obj``: the first of ``keys`` present, else ``obj`` itself."""
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found (expected tensors, or one of {', '.join(keys)})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: no state dict found: entries {', '.join(map(str, bad[:3]))} are not tensors "
            f"(expected a bare state dict or one of {', '.join(keys)})"
        )
    return {str(k): v for k, v in obj.items()}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key when all keys carry it (DDP ``module.``, wrappers)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch names missing/unexpected keys and shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_preview(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_preview(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_preview(shapes)})")
        raise CheckpointError(f"{path}: does not match the model architecture: {'; '.join(parts)}")
    module.load_state_dict(dict(state), strict=True)


def _preview(items: list[str], n: int = 3) -> str:
    more = f", … +{len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
