"""``AdaptedModel``: a frozen core with named adapters, one method family per model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft import PeftModel
from torch import nn

from adapt3d.cores import core_fingerprint, core_spec
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.cores.registry import core_preprocessing
from adapt3d.errors import ConfigError
from adapt3d.tuners.config import AdapterConfig
from adapt3d.tuners.methods import TUNERS, PeftLora, Tuner


class AdaptedModel(nn.Module):
    """A core plus adapters. ``encode``/``decode`` behave like the core's, through the active adapter.

    ``using(name)`` selects an adapter for a block of calls; ``using(None)`` runs the plain
    frozen core (bit-identical to it). Only adapter parameters are trainable (all of them for
    ``full``).
    """

    def __init__(self, core: nn.Module, *, fingerprint: str | None = None) -> None:
        super().__init__()
        if isinstance(core, (AdaptedModel, PeftModel)):
            raise ConfigError("add adapters to a plain core (adapt3d.load_core), not to an adapted model")
        core.requires_grad_(False)
        self.net = core
        self.core_name: str = core_spec(core).name
        self.fingerprint = fingerprint or core_fingerprint(core)
        self.configs: dict[str, AdapterConfig] = {}
        self.modules_of: dict[str, list[str]] = {}
        self.active: str | None = None

    # -- the core's interface -------------------------------------------------------------
    @property
    def core(self) -> nn.Module:
        """The underlying core module (with adapter layers injected, for peft methods)."""
        return self.net.get_base_model() if isinstance(self.net, PeftModel) else self.net

    @property
    def image_size(self) -> int:
        return self.core.image_size

    @property
    def low_res_size(self) -> int:
        return self.core.low_res_size

    @property
    def config(self):
        return self.core.config

    @property
    def preprocessing(self) -> Preprocessing:
        """The core's preprocessing (adapters do not change what the input must look like)."""
        return core_preprocessing(self.core)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.core.encode(images)

    def decode(self, *args, **kwargs):
        return self.core.decode(*args, **kwargs)

    # -- adapters ---------------------------------------------------------------------------
    @property
    def tuner(self) -> Tuner | None:
        methods = {cfg.method for cfg in self.configs.values()}
        return TUNERS.get(next(iter(methods))) if methods else None

    def add(self, cfg: AdapterConfig) -> list[str]:
        """Attach a new adapter; it becomes active and its parameters the only trainable ones."""
        tuner = TUNERS.get(cfg.method)
        if cfg.name in self.configs:
            raise ConfigError(f"an adapter called {cfg.name!r} is already attached")
        current = self.tuner
        if current is not None and current.family != tuner.family:
            raise ConfigError(
                f"cannot mix {cfg.method!r} with {next(iter(self.configs.values())).method!r} adapters on one model"
            )
        if current is not None and not current.switchable:
            raise ConfigError(f"a {next(iter(self.configs.values())).method!r} model holds only one adapter")
        self.net, names = tuner.attach(self.net, self.core_name, cfg)
        self.configs[cfg.name] = cfg
        self.modules_of[cfg.name] = names
        self.set_active(cfg.name)
        self.set_trainable(cfg.name)
        if isinstance(tuner, PeftLora):
            tuner.slice_masks(self.net, self.core_name, cfg)
        return names

    def _apply(self, fn, recurse: bool = True):
        """``.to()``/``.cuda()``/``.double()`` …, then the q/v-slice gradient hooks are re-registered on
        the parameters' current tensors (they would be lost where a conversion swaps tensors)."""
        super()._apply(fn, recurse)
        tuner = self.tuner
        if isinstance(tuner, PeftLora):
            for cfg in self.configs.values():
                tuner.slice_masks(self.net, self.core_name, cfg, zero=False)
        return self

    def set_trainable(self, name: str | None) -> None:
        """Make exactly adapter ``name``'s parameters trainable (None: nothing)."""
        for p in self.net.parameters():
            p.requires_grad_(False)
        if name is not None:
            for p in self.tuner.adapter_parameters(self.net, name).values():
                p.requires_grad_(True)

    def set_active(self, name: str | None) -> None:
        """Route calls through adapter ``name``; None runs the plain core."""
        if name is not None and name not in self.configs:
            raise ConfigError(f"no adapter called {name!r}; attached: {', '.join(self.configs) or 'none'}")
        if self.tuner is not None:
            if name is None and not self.tuner.switchable:
                raise ConfigError(f"{self.tuner.family} fine-tuning changes the core itself; it cannot be switched off")
            self.tuner.activate(self.net, name)
        self.active = name

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[AdaptedModel]:
        """Temporarily route calls through adapter ``name`` (None: the plain core); afterwards the
        previous adapter is active and exactly the parameters that trained before train again
        (peft's disabled adapter layers clear ``requires_grad``; it is restored here)."""
        previous = self.active
        trainable = [(p, p.requires_grad) for p in self.parameters()]
        self.set_active(name)
        try:
            yield self
        finally:
            self.set_active(previous)
            for p, flag in trainable:
                p.requires_grad_(flag)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups of the trainable parameters: weight decay on matrices only.

        Vectors (biases, norm scales, DoRA magnitudes) get no decay: decaying a magnitude shrinks
        the adapted weight, and for q/v-sliced DoRA it would move the frozen k rows.
        """
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors that make up adapter ``name`` (what ``save_adapter`` writes)."""
        return self.tuner.state(self.net, name)

    def trainable_report(self) -> dict:
        """Trainable parameters per core part and in total, also as % of the core's parameters."""
        core_total = sum(p.numel() for n, p in self.core.named_parameters() if _is_core_param(n))
        parts: dict[str, int] = {}
        for n, p in self.core.named_parameters():
            if p.requires_grad:
                part = n.split(".")[0]
                parts[part] = parts.get(part, 0) + p.numel()
        trainable = sum(parts.values())
        return {
            "core_parameters": core_total,
            "trainable_parameters": trainable,
            "trainable_percent": 100.0 * trainable / max(core_total, 1),
            "per_part": parts,
        }


def _is_core_param(name: str) -> bool:
    """True for the core's own weights (not LoRA/DoRA factors or bottleneck branches)."""
    return not any(tag in name for tag in (".lora_", "adapt3d_branches"))


def add_adapters(core: nn.Module, cfg: AdapterConfig, *, verbose: bool = True) -> AdaptedModel:
    """Wrap ``core`` with a new adapter from ``cfg``; prints and returns the trainable-parameter report."""
    model = AdaptedModel(core)
    model.add(cfg)
    if verbose:
        print(format_report(model.trainable_report(), cfg))
    return model


def format_report(report: dict, cfg: AdapterConfig | None = None) -> str:
    """A short table of trainable parameters per core part."""
    head = f"adapter {cfg.name!r}: {cfg.method}" + (f", rank {cfg.rank}" if cfg and cfg.method not in ("full", "none") else "") if cfg else "model"
    lines = [head]
    for part, n in sorted(report["per_part"].items()):
        lines.append(f"  {part:<16} {n:>12,d} trainable")
    lines.append(
        f"  {'total':<16} {report['trainable_parameters']:>12,d} trainable = "
        f"{report['trainable_percent']:.3f}% of the core's {report['core_parameters']:,d}"
    )
    return "\n".join(lines)
