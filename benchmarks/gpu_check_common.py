"""Shared pieces of ``benchmarks/gpu_check.py``: sizes, the check registry, the timing and memory
context, and the two architectures compared (the official SAM-Med3D from ``medim``, adapt3d's cores)."""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

#: --quick: 32³ input, 4³ tokens, windows of 3 (a full and a padded window per axis), one global block.
QUICK_SAM = dict(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, window_size=3,
                 global_attn_indexes=(1,), prompt_dim=48)
QUICK_SEGVOL = dict(image_size=(8, 32, 32), patch_size=(2, 8, 8), embed_dim=64, depth=2, num_heads=1, mlp_dim=128,
                    decoder_depth=1, decoder_mlp_dim=64, iou_head_hidden_dim=32, text_hidden_size=32, text_layers=1,
                    text_heads=1, text_intermediate_size=64, text_max_positions=24)
METHODS = {  # name → AdapterConfig fields (rank 32 as in the published recipe)
    "lora": dict(method="lora", rank=32),
    "lora-qv": dict(method="lora", rank=32, qkv_slices="qv"),
    "dora": dict(method="dora", rank=32),
    "adapter": dict(method="adapter", rank=32),
    "full": dict(method="full"),
}
CHECKS: list[tuple[str, Callable]] = []


def check(name: str):
    """Register a check; it returns its figures and ``ok`` (a bool)."""

    def add(fn):
        CHECKS.append((name, fn))
        return fn

    return add


class Ctx:
    """Sizes and device of one run."""

    def __init__(self, device: str, quick: bool) -> None:
        self.device, self.quick = torch.device(device), quick
        self.cuda = self.device.type == "cuda"
        self.arch = QUICK_SAM if quick else {}
        self.size = 32 if quick else 128
        self.enc_batches = (1, 2) if quick else (1, 8)
        self.steps, self.warmup = (1, 0) if quick else (5, 2)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        """Peak allocated GPU memory since :meth:`reset_peak` (None on a CPU: not measured)."""
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3) if self.cuda else None

    def timed(self, fn: Callable[[], object], repeats: int | None = None) -> tuple[float, object]:
        """Median wall time (ms) of ``fn`` after warm-up, and its last output."""
        out = None
        for _ in range(self.warmup):
            out = fn()
        times = []
        for _ in range(repeats or self.steps):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(times), 2), out

    def autocast(self, precision: str):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def official_model(ctx: Ctx):
    """The official architecture (medim), randomised like the parity tests (non-zero rel-pos, qkv bias).

    Full size: ``medim.create_model("SAM-Med3D", pretrained=False)``; --quick: the same classes at
    :data:`QUICK_SAM`'s sizes (medim's builder fixes the window at 14).
    """
    import medim
    from medim.models import sam_med3d as official

    torch.manual_seed(0)
    if ctx.quick:
        a, grid = QUICK_SAM, QUICK_SAM["image_size"] // QUICK_SAM["patch_size"]
        ref = official.SAM_Med3D(
            official.ImageEncoderViT3D(
                img_size=a["image_size"], patch_size=a["patch_size"], embed_dim=a["embed_dim"], depth=a["depth"],
                num_heads=a["num_heads"], out_chans=a["prompt_dim"], window_size=a["window_size"], use_rel_pos=True,
                global_attn_indexes=a["global_attn_indexes"], norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
            ),
            official.PromptEncoder3D(embed_dim=a["prompt_dim"], image_embedding_size=(grid,) * 3,
                                     input_image_size=(a["image_size"],) * 3, mask_in_chans=16),
            official.MaskDecoder3D(transformer_dim=a["prompt_dim"], num_multimask_outputs=3),
        )
    else:
        ref = medim.create_model("SAM-Med3D", pretrained=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if "rel_pos" in name or name.endswith("qkv.bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return ref


def our_core(ctx: Ctx, state: dict | None = None):
    from adapt3d import load_core

    core = load_core("sam-med3d", **ctx.arch)
    if state is not None:
        core.load_state_dict(state, strict=True)
    return core


def segvol_core(ctx: Ctx):
    """The SegVol architecture (release size; --quick: tiny), random weights."""
    from adapt3d import load_core

    torch.manual_seed(0)
    return load_core("segvol", **(QUICK_SEGVOL if ctx.quick else {}))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
