"""Learned class prompts: per class of the target dataset, a learned prompt in the space the core's
decoder takes without any click, trained with the adapter (:mod:`adapt3d.auto.training`).

What a class prompt is follows the core's contract, in one place (:data:`PROMPT_SLOTS`, by the
contract's prompt kind): for cores that take ``tokens`` (SAM-style), a few sparse prompt tokens
given as ``decode(prompt_tokens=...)``; for cores that take ``text`` (SegVol), one vector in the
text-embedding space given as ``decode(text=...)`` in place of an encoded class name. They are
saved beside the adapter as ``class_prompts.safetensors``: one tensor ``tokens`` (classes, tokens
per class, dimension); the kind, class names and label values in the safetensors metadata (JSON;
no pickle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from adapt3d.atomic import atomic_file, refuse_existing
from adapt3d.cores import core_spec
from adapt3d.cores.contract import CoreContract
from adapt3d.cores.registry import CoreSpec
from adapt3d.errors import CheckpointError, ConfigError, InputError

#: File name of the class prompts inside an adapter directory.
PROMPTS_FILE = "class_prompts.safetensors"
_META_KEY = "adapt3d_class_prompts"
_FORMAT = 1


def _token_init(core: nn.Module, class_names: Sequence[str], tokens_per_class: int, seed: int, modality: str) -> torch.Tensor:
    """The prompt encoder's positive-point embedding (a click whose place is not given) plus seeded
    noise of sd 0.5, different per class and token."""
    dim = int(core.config.prompt_dim)
    tokens = 0.5 * torch.randn(len(class_names), tokens_per_class, dim, generator=torch.Generator().manual_seed(seed))
    embeddings = getattr(getattr(core, "prompt_encoder", None), "point_embeddings", None)
    if embeddings is not None and len(embeddings) > 1:
        tokens = tokens + embeddings[1].weight.detach().float().cpu().reshape(1, 1, dim)
    return tokens


def _text_init(core: nn.Module, class_names: Sequence[str], tokens_per_class: int, seed: int, modality: str) -> torch.Tensor:
    """The core's own text embedding of each class name in the modality's template ("_" read as a
    space, as the prompt rounds write it); seeded noise of sd 0.5 where the core has no tokenizer."""
    try:
        with torch.no_grad():
            vectors = core.encode_text([n.replace("_", " ") for n in class_names], modality)
        return vectors.detach().float().cpu()[:, None, :]
    except (ConfigError, InputError):  # no CLIP vocabulary installed, or one that does not fit the text tower
        g = torch.Generator().manual_seed(seed)
        return 0.5 * torch.randn(len(class_names), 1, int(core.config.embed_dim), generator=g)


@dataclass(frozen=True)
class PromptSlot:
    """How the class prompts of one contract prompt kind are made and given to ``decode``."""

    dim: Callable[[nn.Module], int]  # a core's prompt dimension
    init: Callable[[nn.Module, Sequence[str], int, int, str], torch.Tensor]  # (core, names, T, seed, modality) -> (C, T, dim)
    decode: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # (B, T, dim) prompts -> decode keywords
    max_tokens: int | None = None  # prompts per class the slot takes (None: any number)


#: The class-prompt slot of each contract prompt kind, in order of preference: SAM-style decoder
#: tokens, then a text embedding (SegVol: one vector per class, in place of an encoded class name).
PROMPT_SLOTS: dict[str, PromptSlot] = {
    "tokens": PromptSlot(lambda core: int(core.config.prompt_dim), _token_init, lambda t: {"prompt_tokens": t}),
    "text": PromptSlot(lambda core: int(core.config.embed_dim), _text_init, lambda t: {"text": t[:, 0]}, max_tokens=1),
}


def class_prompt_kind(contract: CoreContract) -> str | None:
    """The kind of class prompts a core of ``contract`` takes (a :data:`PROMPT_SLOTS` key; None: none)."""
    return next((kind for kind in PROMPT_SLOTS if contract.takes(kind)), None)


def contract_problems(spec: CoreSpec, tokens_per_class: int) -> list[str]:
    """Why ``auto.enabled`` cannot train class prompts for the core of ``spec`` (empty: it can)."""
    kind = class_prompt_kind(spec.contract)
    if spec.contract.training is None or kind is None:
        return [(f"auto.enabled: not available for {spec.name} (class prompts need a training recipe and decoder "
                 "tokens or text prompts in the core's contract)")]
    most = PROMPT_SLOTS[kind].max_tokens
    if most is not None and tokens_per_class > most:
        return [f"auto.tokens_per_class: {spec.name}'s class prompts are {kind} ({most} per class), got {tokens_per_class}"]
    return []


class ClassPrompts(nn.Module):
    """``tokens`` (C, T, dim): T learned prompts of ``kind`` (a :data:`PROMPT_SLOTS` key) for each
    of C named classes.

    ``label_values`` are the classes' values in the dataset's label maps (what automatic
    prediction writes for them).
    """

    def __init__(self, class_names: Sequence[str], label_values: Sequence[int], tokens: torch.Tensor,
                 kind: str = "tokens") -> None:
        super().__init__()
        names = tuple(str(n) for n in class_names)
        values = tuple(int(v) for v in label_values)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class prompts need distinct class names, got {names}")
        if len(values) != len(names) or any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"class prompts need one distinct label value ≥ 1 per class, got {values} for {names}")
        if tokens.dim() != 3 or tokens.shape[0] != len(names) or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be (classes={len(names)}, tokens per class, prompt_dim), got {tuple(tokens.shape)}")
        if kind not in PROMPT_SLOTS:
            raise ValueError(f"unknown class-prompt kind {kind!r}; known: {', '.join(PROMPT_SLOTS)}")
        most = PROMPT_SLOTS[kind].max_tokens
        if most is not None and tokens.shape[1] > most:
            raise ValueError(f"class prompts of kind {kind!r} take {most} per class, got {tokens.shape[1]}")
        self.class_names = names
        self.label_values = values
        self.kind = kind
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

    def decode_inputs(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``decode`` keywords that prompt with the classes at ``index`` (B,) alone:
        ``prompt_tokens`` (B, T, dim) or ``text`` (B, dim), by the prompts' kind."""
        return PROMPT_SLOTS[self.kind].decode(self(index))

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
        cls, core: nn.Module, class_names: Sequence[str], label_values: Sequence[int], tokens_per_class: int = 1, *, seed: int = 0,
        modality: str = "CT",
    ) -> ClassPrompts:
        """New prompts for ``core``, of the kind its contract takes, initialised by that kind's slot
        (tokens: the positive-point embedding plus seeded noise; text: the class names' text embeddings
        in the ``modality`` template)."""
        spec = core_spec(core)
        kind = class_prompt_kind(spec.contract)
        if kind is None:
            raise ConfigError(f"the {spec.name} core takes neither prompt tokens nor text (its contract): it has no class prompts")
        slot = PROMPT_SLOTS[kind]
        if slot.max_tokens is not None and tokens_per_class > slot.max_tokens:
            raise ConfigError(f"the {spec.name} core's class prompts are {kind} ({slot.max_tokens} per class), got {tokens_per_class}")
        return cls(class_names, label_values, slot.init(core, class_names, tokens_per_class, seed, modality), kind)

    def metadata(self) -> dict:
        """What the safetensors metadata records besides the tokens."""
        return {"format": _FORMAT, "kind": self.kind, "class_names": list(self.class_names),
                "label_values": list(self.label_values), "tokens_per_class": self.tokens_per_class, "prompt_dim": self.prompt_dim}


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
        return ClassPrompts(meta["class_names"], meta["label_values"], tokens, meta.get("kind", "tokens"))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a valid class-prompts file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def check_prompts_fit(prompts: ClassPrompts, model: nn.Module, where: str) -> None:
    """:class:`ConfigError` unless ``model`` (a core or adapted one) takes class prompts; a
    :class:`CheckpointError` unless these are of its kind and dimension."""
    core = getattr(model, "core", model)
    spec = core_spec(core)
    kind = class_prompt_kind(spec.contract)
    if kind is None:
        raise ConfigError(f"{where}: the {spec.name} core takes neither prompt tokens nor text (its contract); "
                          "automatic segmentation supports SAM-style cores (sam-med3d) and SegVol")
    if prompts.kind != kind:
        raise CheckpointError(f"{where}: class prompts of kind {prompts.kind!r}, the {spec.name} core takes {kind!r} ones")
    dim = PROMPT_SLOTS[kind].dim(core)
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
