"""``AdapterConfig``: which adapter method, where, and how big; YAML ⇄ dataclass."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from adapt3d.atomic import atomic_file
from adapt3d.config import build_dataclass, setting
from adapt3d.errors import ConfigError


class _MethodNames(Sequence[str]):
    """The adapter methods of the ``TUNERS`` registry (adapt3d.tuners.methods), in registration
    order; read when first asked, as that module imports this one."""

    def _names(self) -> tuple[str, ...]:
        from adapt3d.tuners.methods import TUNERS

        return tuple(TUNERS.registered())

    def __getitem__(self, index):  # type: ignore[override]
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


#: Adapter methods: the names registered in ``TUNERS``.
METHOD_NAMES: Sequence[str] = _MethodNames()

#: Targets used when a config names none: attention for LoRA/DoRA and sequential adapters
#: (the published recipe adapts encoder qkv and decoder attention), MLPs for AdaptFormer;
#: a method not listed (full, none) has no targets.
DEFAULT_TARGETS = {
    "lora": ("encoder.qkv", "decoder.attn"),
    "dora": ("encoder.qkv", "decoder.attn"),
    "adapter": ("encoder.attn", "decoder.attn"),
    "adaptformer": ("encoder.mlp", "decoder.mlp"),
}


@dataclass(frozen=True)
class AdapterConfig:
    """An adapter on a frozen core.

    method      lora | dora (through peft), adapter (sequential bottleneck after each target, as
                SAM-Med2D), adaptformer (parallel scaled bottleneck beside each target), full (all
                core weights trainable), none (frozen core: the baseline).
    rank        LoRA/DoRA rank, or the bottleneck width of adapter/adaptformer.
    alpha       LoRA/DoRA scaling numerator (update scaled by alpha / rank).
    dropout     dropout on the adapter input.
    targets     readable target names (``encoder.qkv``, ``decoder.attn`` …; see
                ``adapt3d.tuners.TARGET_TABLES``) or globs over module names; empty → the
                method's defaults (DEFAULT_TARGETS).
    qkv_slices  ``qkv`` adapts the fused encoder qkv projection whole; ``qv`` only its q and v
                parts (each with its own rank-``rank`` LoRA), leaving k exactly frozen.
    scale       output scale of adaptformer branches (adapter: 1.0).
    name        adapter name (several named adapters can sit side by side on one core).
    """

    method: str = setting("lora", choices=METHOD_NAMES)
    rank: int = setting(32, ge=1)
    alpha: float = setting(32.0, gt=0.0)
    dropout: float = setting(0.0, ge=0.0, lt=1.0)
    targets: tuple[str, ...] = ()
    qkv_slices: str = setting("qkv", choices=("qkv", "qv"))
    scale: float = 0.1
    name: str = "default"

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ConfigError(f"adapter method {self.method!r} is unknown; valid: {', '.join(METHOD_NAMES)}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if not self.targets:
            object.__setattr__(self, "targets", DEFAULT_TARGETS.get(self.method, ()))
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.method not in ("full", "none"):
            if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
                raise ConfigError(f"adapter rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"adapter dropout must be in [0, 1), got {self.dropout!r}")
        if self.qkv_slices not in ("qkv", "qv"):
            raise ConfigError(f"qkv_slices must be 'qkv' or 'qv', got {self.qkv_slices!r}")
        if self.alpha <= 0:
            raise ConfigError(f"adapter alpha must be positive, got {self.alpha!r}")
        if not self.name or not str(self.name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"adapter name {self.name!r} must be letters, digits, '-' or '_'")

    def to_dict(self) -> dict:
        """Plain JSON/YAML-able values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, where: str = "adapter config") -> AdapterConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming the nearest key."""
        return build_dataclass(cls, dict(values), where)


def load_adapter_config(path: str | os.PathLike) -> AdapterConfig:
    """Read an adapter config YAML (the keys of :class:`AdapterConfig`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: adapter config not found")
    try:
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of adapter settings")
    return AdapterConfig.from_dict(values, where=str(path))


def save_adapter_config(cfg: AdapterConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML (atomically)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        OmegaConf.save(OmegaConf.create(cfg.to_dict()), tmp)
    return path
