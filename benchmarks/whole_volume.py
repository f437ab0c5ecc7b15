"""Whole-volume prediction on a CT-sized volume: windows, wall time and peak memory.

A synthetic 512×512×300 CT (0.8×0.8×1.5 mm, 40 HU background) holds one large bright object
(an ellipsoid of 300×240×280 mm at 300 HU). Every window runs the full-size SAM-Med3D
architecture (``adapt3d.load_core("sam-med3d")``, random weights: no pretrained weights here).

``--core oracle`` (default): the full-size encoder and decoder run on every window (their real
cost), but the window's mask is an intensity threshold at its click, so windows follow the
object as they would with a model that segments it; the Dice against the object is printed.
``--core sam-med3d``: the random core's own masks drive the growth (meaningless masks, so the
run usually ends at the window budget).

    python benchmarks/whole_volume.py                       # CPU
    python benchmarks/whole_volume.py --core sam-med3d
    python benchmarks/whole_volume.py --device cuda

Peak memory: ``ru_maxrss`` of the process (before and after the prediction), the peak of
numpy's traced allocations during the prediction (tracemalloc; torch CPU tensors are not
traced), and ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt3d import load_core
from adapt3d.data.imageio import Volume
from adapt3d.infer import WholeVolumeConfig, WholeVolumePredictor


class TimedCore(nn.Module):
    """Runs ``core`` on every window and times it; with ``oracle`` the mask thresholds the crop."""

    def __init__(self, core: nn.Module, oracle: bool) -> None:
        super().__init__()
        self.core, self.oracle = core, oracle
        self.image_size, self.low_res_size = core.image_size, core.low_res_size
        self.seconds = {"encode": 0.0, "decode": 0.0}

    def _timed(self, key: str, fn, *args, **kwargs):
        device = next(self.core.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds[key] += time.perf_counter() - start
        return out

    def encode(self, images: torch.Tensor):
        self.crop = images  # the oracle reads the window's intensities (windows run one at a time)
        return self._timed("encode", self.core.encode, images)

    def decode(self, embeddings, points, labels, mask_logits=None, multimask_output=False):
        crop, emb = self.crop, embeddings
        logits, iou = self._timed("decode", self.core.decode, emb, points, labels, mask_logits)
        if not self.oracle:
            return logits, iou
        # object = voxels brighter than halfway between the window's darkest voxel and the click
        click = points[0, 0].long().clamp(0, self.image_size - 1)
        level = (crop[0, 0][tuple(click)] + crop.min()) / 2
        low = F.adaptive_avg_pool3d(crop, self.low_res_size)
        return torch.where(low > level, 10.0, -10.0).to(logits.dtype), iou


def synthetic_ct(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[Volume, np.ndarray]:
    """A 40 HU volume with a 300 HU ellipsoid (semi-axes 150, 120, 140 mm) and the ellipsoid mask."""
    axes = [(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = (a.astype(np.float32) for a in axes)
    inside = (x[:, None, None] / 150) ** 2 + (y[None, :, None] / 120) ** 2 + (z[None, None, :] / 140) ** 2 <= 1
    image = np.where(inside, np.float32(300), np.float32(40))
    return Volume(image, np.diag([*spacing, 1.0])), inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", choices=["oracle", "sam-med3d"], default="oracle")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    parser.add_argument("--max-windows", type=int, default=27)
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    core = TimedCore(load_core("sam-med3d").eval().to(device), oracle=args.core == "oracle")
    image, truth = synthetic_ct(tuple(args.shape), tuple(args.spacing))
    click = tuple(n // 2 for n in args.shape)
    config = WholeVolumeConfig(max_windows=args.max_windows, overlap=args.overlap)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tracemalloc.start()
    start = time.perf_counter()
    result = WholeVolumePredictor(core, config).predict(image, "CT", [click], [1])
    wall = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    mask = result.mask.astype(bool)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "core": f"{args.core} (full-size SAM-Med3D architecture, random weights)",
        "volume": f"{'x'.join(map(str, args.shape))} at {'x'.join(f'{s:g}' for s in args.spacing)} mm",
        **result.summary(),
        "wall_s": round(wall, 1),
        "encode_s": round(core.seconds["encode"], 1),
        "decode_s": round(core.seconds["decode"], 1),
        "other_s (resampling, blending, prompts)": round(wall - sum(core.seconds.values()), 1),
        "peak_rss_mib_before": round(rss_before),
        "peak_rss_mib_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "numpy_traced_peak_mib": round(traced_peak),
        "dice_vs_object": round(float(2 * (mask & truth).sum() / (mask.sum() + truth.sum())), 4),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        report["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
