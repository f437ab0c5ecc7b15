"""Bottleneck adapter branches attached to core modules by forward hooks (core keys unchanged).

``adapter`` (sequential, as SAM-Med2D): y = m(x); y + s·f(y).
``adaptformer`` (parallel): m(x) + s·f(x).
f = up(act(down(dropout(·)))) with ``up`` zero-initialised, so a new branch changes nothing.
Each hooked module keeps its branches in ``adapt3d_branches`` (a ModuleDict keyed by adapter
name) and the active one in ``adapt3d_active``; the hook is a plain function, so copies work.
"""

from __future__ import annotations

import torch
from torch import nn

BRANCHES = "adapt3d_branches"
ACTIVE = "adapt3d_active"


class Bottleneck(nn.Module):
    """down (dim_in → rank), GELU, up (rank → dim_out), optional input dropout; zero output at init."""

    def __init__(self, dim_in: int, dim_out: int, rank: int, dropout: float, scale: float, parallel: bool) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.down = nn.Linear(dim_in, rank)
        self.act = nn.GELU()
        self.up = nn.Linear(rank, dim_out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale
        self.parallel = parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(self.drop(x))))


def module_dims(module: nn.Module) -> tuple[int, int]:
    """(input features, output features) of a block: its first and last Linear layers."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no Linear layer to size a bottleneck adapter")
    return linears[0].in_features, linears[-1].out_features


def _hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    name = getattr(module, ACTIVE, None)
    branches = getattr(module, BRANCHES)
    if name is None or name not in branches:
        return output
    branch = branches[name]
    return output + branch(inputs[0] if branch.parallel else output)


def attach_branch(module: nn.Module, name: str, rank: int, dropout: float, scale: float, parallel: bool) -> Bottleneck:
    """Add a named branch to ``module`` (installing the hook once) and return it."""
    if not hasattr(module, BRANCHES):
        module.add_module(BRANCHES, nn.ModuleDict())
        setattr(module, ACTIVE, None)
        module.register_forward_hook(_hook)
    dim_in, dim_out = module_dims(module)
    ref = next(module.parameters())
    branch = Bottleneck(dim_in, dim_out, rank, dropout, scale, parallel).to(device=ref.device, dtype=ref.dtype)
    getattr(module, BRANCHES)[name] = branch
    return branch


def set_active_branch(root: nn.Module, name: str | None) -> None:
    """Make ``name`` the active branch on every hooked module under ``root`` (None: none)."""
    for module in root.modules():
        if hasattr(module, BRANCHES):
            setattr(module, ACTIVE, name)


def branch_modules(root: nn.Module, name: str) -> dict[str, Bottleneck]:
    """Hooked module name → its branch called ``name``."""
    return {
        n: getattr(m, BRANCHES)[name]
        for n, m in root.named_modules()
        if hasattr(m, BRANCHES) and name in getattr(m, BRANCHES)
    }
