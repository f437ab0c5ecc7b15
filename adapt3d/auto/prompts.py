"""Learned class prompts: per class of the target dataset, a few sparse prompt tokens in the
decoder's prompt space, trained with the adapter (:mod:`adapt3d.auto.training`).

Given to a SAM-style core's ``decode(prompt_tokens=...)`` without any click, a class's tokens make
an automatic prompt for that class. They are saved beside the adapter as
``class_prompts.safetensors``: one tensor ``tokens`` (classes, tokens per class, prompt_dim), the
class names and their label values in the safetensors metadata (JSON; no pickle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from adapt3d.atomic import atomic_file, refuse_existing
from adapt3d.cores import core_spec
from adapt3d.errors import CheckpointError, ConfigError, InputError

#: File name of the class prompts inside an adapter directory.
PROMPTS_FILE = "class_prompts.safetensors"
_META_KEY = "adapt3d_class_prompts"
_FORMAT = 1


class ClassPrompts(nn.Module):
    """``tokens`` (C, T, prompt_dim): T learned prompt tokens for each of C named classes.

    ``label_values`` are the classes' values in the dataset's label maps (what automatic
    prediction writes for them).
    """

    def __init__(self, class_names: Sequence[str], label_values: Sequence[int], tokens: torch.Tensor) -> None:
        super().__init__()
        names = tuple(str(n) for n in class_names)
        values = tuple(int(v) for v in label_values)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class prompts need distinct class names, got {names}")
        if len(values) != len(names) or any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"class prompts need one distinct label value ≥ 1 per class, got {values} for {names}")
        if tokens.dim() != 3 or tokens.shape[0] != len(names) or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be (classes={len(names)}, tokens per class, prompt_dim), got {tuple(tokens.shape)}")
        self.class_names = names
        self.label_values = values
        self.tokens = nn.Parameter(tokens.detach().clone().float())

    @property
    def tokens_per_class(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def prompt_dim(self) -> int:
        return int(self.tokens.shape[2])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """The (B, T, prompt_dim) tokens of the classes at ``index`` (B,)."""
        return self.tokens[index.long()]

    def indices(self, names: Sequence[str] | None = None) -> list[int]:
        """Indices of ``names`` (None: every class); an unknown name is an :class:`InputError`."""
        if names is None:
            return list(range(len(self.class_names)))
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise InputError(f"no class prompt for {unknown[0]!r}; trained classes: {', '.join(self.class_names)}")
        return [self.class_names.index(n) for n in names]

    @classmethod
    def for_core(
        cls, core: nn.Module, class_names: Sequence[str], label_values: Sequence[int], tokens_per_class: int = 1, *, seed: int = 0
    ) -> ClassPrompts:
        """New prompts for ``core``: the prompt encoder's positive-point embedding (a click whose place
        is not given) plus seeded noise of sd 0.5, different per class and token."""
        dim = int(core.config.prompt_dim)
        g = torch.Generator().manual_seed(seed)
        tokens = 0.5 * torch.randn(len(class_names), tokens_per_class, dim, generator=g)
        embeddings = getattr(getattr(core, "prompt_encoder", None), "point_embeddings", None)
        if embeddings is not None and len(embeddings) > 1:
            tokens = tokens + embeddings[1].weight.detach().float().cpu().reshape(1, 1, dim)
        return cls(class_names, label_values, tokens)

    def metadata(self) -> dict:
        """What the safetensors metadata records besides the tokens."""
        return {"format": _FORMAT, "class_names": list(self.class_names), "label_values": list(self.label_values),
                "tokens_per_class": self.tokens_per_class, "prompt_dim": self.prompt_dim}


def save_class_prompts(prompts: ClassPrompts, path: str | os.PathLike) -> Path:
    """Write ``prompts`` to ``path`` (a file, or an adapter directory: ``<dir>/class_prompts.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROMPTS_FILE
    tokens = prompts.tokens.detach().cpu().float().contiguous()
    with atomic_file(path) as tmp:
        save_file({"tokens": tokens}, str(tmp), metadata={_META_KEY: json.dumps(prompts.metadata())})
    return path


def prompts_path(path: str | os.PathLike) -> Path:
    """The class-prompts file of ``path`` (an adapter directory or the file itself); one-line error if absent."""
    path = Path(path)
    file = path / PROMPTS_FILE if path.is_dir() else path
    if not file.is_file():
        if path.is_dir():
            raise CheckpointError(f"{path}: adapter has no class prompts ({PROMPTS_FILE}); train it with auto.enabled: true")
        raise CheckpointError(f"{path}: class-prompts file not found")
    return file


def load_class_prompts(path: str | os.PathLike) -> ClassPrompts:
    """Read the class prompts of an adapter directory (or a ``*.class_prompts.safetensors`` file)."""
    file = prompts_path(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
            tokens = f.get_tensor("tokens")
        return ClassPrompts(meta["class_names"], meta["label_values"], tokens)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a valid class-prompts file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def check_prompts_fit(prompts: ClassPrompts, model: nn.Module, where: str) -> None:
    """:class:`ConfigError` unless ``model`` is a SAM-style core (or adapted one) taking these tokens."""
    core = getattr(model, "core", model)
    spec = core_spec(core)
    if not spec.contract.takes("tokens"):
        raise ConfigError(f"{where}: the {spec.name} core takes no prompt tokens (its contract); "
                          "automatic segmentation supports SAM-style cores (sam-med3d)")
    dim = int(core.config.prompt_dim)
    if prompts.prompt_dim != dim:
        raise CheckpointError(f"{where}: class prompts have dimension {prompts.prompt_dim}, the core's prompt space {dim}")


def exported_prompts_path(exported: str | os.PathLike) -> Path:
    """Where ``adapt3d export`` puts an adapter's class prompts: ``<stem>.class_prompts.safetensors``
    beside the exported weights."""
    exported = Path(exported)
    return exported.with_name(exported.name.split(".")[0] + "." + PROMPTS_FILE)


def plan_prompts_export(adapter: str | os.PathLike, exported: str | os.PathLike, *, overwrite: bool) -> Callable[[], str] | None:
    """None if the adapter has no class prompts; else (after checking that the destination may be
    written) a function that copies them beside ``exported`` and returns a line saying so."""
    if not (Path(adapter) / PROMPTS_FILE).is_file():
        return None
    prompts = load_class_prompts(adapter)
    dest = refuse_existing(exported_prompts_path(exported), overwrite=overwrite)

    def write() -> str:
        save_class_prompts(prompts, dest)
        return f"wrote the class prompts ({', '.join(prompts.class_names)}) to {dest} (adapt3d predict --auto --class-prompts)"

    return write
