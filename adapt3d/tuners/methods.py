"""Adapter methods behind one interface: LoRA/DoRA (peft), bottleneck branches, full, none."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from adapt3d.errors import CheckpointError, ConfigError
from adapt3d.registry import Registry
from adapt3d.tuners.bottleneck import BRANCHES, attach_branch, branch_modules, set_active_branch
from adapt3d.tuners.config import AdapterConfig
from adapt3d.tuners.targets import fused_qkv_names, resolve_targets


class Tuner:
    """One adapter method: how adapters are attached, switched, saved and (maybe) merged."""

    family = "base"
    mergeable = False
    switchable = True  # can the core be used without the adapter?

    def attach(self, net: nn.Module, core_name: str, cfg: AdapterConfig) -> tuple[nn.Module, list[str]]:
        """Add adapter ``cfg.name`` to ``net``; return the (maybe wrapped) net and the adapted modules."""
        raise NotImplementedError

    def activate(self, net: nn.Module, name: str | None) -> None:
        """Route calls through adapter ``name`` (None: the plain core)."""

    def adapter_parameters(self, net: nn.Module, name: str) -> dict[str, nn.Parameter]:
        """The parameters that belong to adapter ``name``."""
        raise NotImplementedError

    def state(self, net: nn.Module, name: str) -> dict[str, torch.Tensor]:
        """Tensors saved for adapter ``name`` (keys in the method's file layout)."""
        return {k: p.detach().cpu().contiguous() for k, p in self.adapter_parameters(net, name).items()}

    def load_state(self, net: nn.Module, name: str, state: dict[str, torch.Tensor], where: Path) -> None:
        """Fill adapter ``name`` from ``state`` (strict: names and shapes must match)."""
        params = self.adapter_parameters(net, name)
        _check_same_keys(params, state, where)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])


def _check_same_keys(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: Path) -> None:
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    shapes = [k for k in params if k in state and tuple(params[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:2]}" if missing else "",
                f"unexpected {unexpected[:2]}" if unexpected else "",
                f"shape mismatch at {shapes[0]}: {tuple(state[shapes[0]].shape)} vs model {tuple(params[shapes[0]].shape)}"
                if shapes
                else "",
            )
            if part
        )
        raise CheckpointError(f"{where}: adapter weights do not fit this core ({detail})")


TUNERS: Registry[Tuner] = Registry("adapter method")


class PeftLora(Tuner):
    """LoRA / DoRA through peft; saved as a plain peft adapter directory."""

    family = "peft"
    mergeable = True

    def __init__(self, dora: bool) -> None:
        self.dora = dora

    def lora_config(self, net: nn.Module, core_name: str, cfg: AdapterConfig) -> tuple[LoraConfig, list[str]]:
        base = net.get_base_model() if isinstance(net, PeftModel) else net
        names = resolve_targets(base, core_name, cfg.targets, linear=True)
        sliced = fused_qkv_names(core_name, names) if cfg.qkv_slices == "qv" else []
        # q/v slices: a rank-2r LoRA whose B is block-structured (q rows ← first r, v rows ← last r,
        # k rows ← nothing): exactly two rank-r LoRAs on q and v, stored as a standard peft layer.
        config = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=names,
            use_dora=self.dora,
            rank_pattern={f"^{re.escape(n)}$": 2 * cfg.rank for n in sliced},
            alpha_pattern={f"^{re.escape(n)}$": 2 * cfg.alpha for n in sliced},
        )
        return config, names

    def attach(self, net: nn.Module, core_name: str, cfg: AdapterConfig) -> tuple[nn.Module, list[str]]:
        config, names = self.lora_config(net, core_name, cfg)
        if isinstance(net, PeftModel):
            net.add_adapter(cfg.name, config)
        else:
            net = get_peft_model(net, config, adapter_name=cfg.name)
        return net, names

    def activate(self, net: nn.Module, name: str | None) -> None:
        if name is None:
            net.base_model.disable_adapter_layers()
            return
        trainable = {n: p.requires_grad for n, p in net.named_parameters()}
        net.base_model.enable_adapter_layers()
        net.base_model.set_adapter(name)
        for n, p in net.named_parameters():  # set_adapter also toggles requires_grad: keep ours
            p.requires_grad_(trainable[n])

    def adapter_parameters(self, net: nn.Module, name: str) -> dict[str, nn.Parameter]:
        suffix = f".{name}.weight"
        return {
            n: p
            for n, p in net.named_parameters()
            if n.endswith(suffix) and (".lora_A." in n or ".lora_B." in n or ".lora_magnitude_vector." in n)
        }

    def state(self, net: nn.Module, name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(net, adapter_name=name).items()}

    def load_state(self, net: nn.Module, name: str, state: dict[str, torch.Tensor], where: Path) -> None:
        expected = get_peft_model_state_dict(net, adapter_name=name)
        _check_same_keys(expected, state, where)
        set_peft_model_state_dict(net, state, adapter_name=name)

    def slice_masks(self, net: nn.Module, core_name: str, cfg: AdapterConfig, *, zero: bool = True) -> None:
        """Keep the k part of sliced fused-qkv layers frozen: mask LoRA-B (and DoRA magnitude) grads.

        The hooks hold no tensor: each zeroes slices of the gradient it is given, so they follow
        the parameters through ``.to(device/dtype)``, autocast and DDP. Called again after a
        conversion (``AdaptedModel._apply``, ``zero=False``) to re-register them on swapped tensors.
        """
        if cfg.qkv_slices != "qv":
            return
        base = net.get_base_model()
        for module_name in fused_qkv_names(core_name, cfg_modules(net, cfg.name)):
            layer = base.get_submodule(module_name)
            weight_b = layer.lora_B[cfg.name].weight
            dim = weight_b.shape[0] // 3
            keep_qv = QvSliceGrad(dim, cfg.rank, magnitude=False)
            if zero:
                with torch.no_grad():
                    weight_b.copy_(keep_qv(weight_b))
            _set_grad_hook(weight_b, keep_qv)
            if self.dora:
                _set_grad_hook(layer.lora_magnitude_vector[cfg.name].weight, QvSliceGrad(dim, cfg.rank, magnitude=True))


def _set_grad_hook(param: nn.Parameter, hook) -> None:
    """Make ``hook`` the one gradient hook of ``param``, registered on the tensor it holds now.

    Conversions that swap tensors (``torch.__future__.set_swap_module_params_on_conversion``)
    leave a stale hook record behind that no longer fires: it is dropped first.
    """
    param._backward_hooks = None
    trainable = param.requires_grad
    param.requires_grad_(True)
    param.register_hook(hook)
    param.requires_grad_(trainable)


class QvSliceGrad:
    """Zeroes what lies outside the q and v slices of a fused-qkv LoRA-B (3·dim × 2·rank: q rows ←
    the first ``rank`` columns, v rows ← the last) or of a DoRA magnitude (3·dim: k rows)."""

    def __init__(self, dim: int, rank: int, magnitude: bool) -> None:
        self.dim, self.rank, self.magnitude = dim, rank, magnitude

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        d, r = self.dim, self.rank
        out = grad.clone()
        out[d : 2 * d] = 0
        if not self.magnitude:
            out[:d, r:] = 0
            out[2 * d :, :r] = 0
        return out


def cfg_modules(net: nn.Module, name: str) -> list[str]:
    """Module names (relative to the core) that carry peft adapter ``name``."""
    base = net.get_base_model()
    return [n for n, m in base.named_modules() if hasattr(m, "lora_A") and name in m.lora_A]


class BranchAdapter(Tuner):
    """Bottleneck branches: sequential ``adapter`` or parallel ``adaptformer``."""

    family = "branch"

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel

    def attach(self, net: nn.Module, core_name: str, cfg: AdapterConfig) -> tuple[nn.Module, list[str]]:
        names = resolve_targets(net, core_name, cfg.targets, linear=False)
        scale = cfg.scale if self.parallel else 1.0
        for n in names:
            try:
                attach_branch(net.get_submodule(n), cfg.name, cfg.rank, cfg.dropout, scale, self.parallel)
            except ValueError as exc:
                raise ConfigError(f"adapter target {n}: {exc}") from None
        return net, names

    def activate(self, net: nn.Module, name: str | None) -> None:
        set_active_branch(net, name)

    def adapter_parameters(self, net: nn.Module, name: str) -> dict[str, nn.Parameter]:
        return {
            f"{module}.{BRANCHES}.{name}.{p}": param
            for module, branch in branch_modules(net, name).items()
            for p, param in branch.named_parameters()
        }


class Full(Tuner):
    """All core weights trainable; the 'adapter' is the whole fine-tuned core."""

    family = "full"
    mergeable = True
    switchable = False

    def attach(self, net: nn.Module, core_name: str, cfg: AdapterConfig) -> tuple[nn.Module, list[str]]:
        net.requires_grad_(True)
        return net, ["(all core weights)"]

    def adapter_parameters(self, net: nn.Module, name: str) -> dict[str, nn.Parameter]:
        return dict(net.named_parameters())

    def state(self, net: nn.Module, name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}

    def load_state(self, net: nn.Module, name: str, state: dict[str, torch.Tensor], where: Path) -> None:
        _check_same_keys(net.state_dict(), state, where)
        net.load_state_dict(state, strict=True)


class NoAdapter(Tuner):
    """The frozen core itself: the baseline every adapter is compared with."""

    family = "none"

    def attach(self, net: nn.Module, core_name: str, cfg: AdapterConfig) -> tuple[nn.Module, list[str]]:
        return net, []

    def adapter_parameters(self, net: nn.Module, name: str) -> dict[str, nn.Parameter]:
        return {}


TUNERS.register("lora", PeftLora(dora=False))
TUNERS.register("dora", PeftLora(dora=True))
TUNERS.register("adapter", BranchAdapter(parallel=False))
TUNERS.register("adaptformer", BranchAdapter(parallel=True))
TUNERS.register("full", Full())
TUNERS.register("none", NoAdapter())
