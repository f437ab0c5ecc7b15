"""Per-class cost of the CVPR 2025 challenge's 6 steps (box + 5 clicks) with the full-size SAM-Med3D
architecture (turbo: ViT-B, 128³ crops at 1.5 mm; random weights — only the time is measured).

    python benchmarks/cvpr25_cost.py [--shape 200,384,384] [--spacing 0.8,0.8,2.5] [--classes 3] [--device cpu]

A synthetic image of challenge-like size (z, y, x) with ``--classes`` ellipsoids runs through the same
loop and predictor as ``adapt3d evaluate --protocol cvpr25`` / ``adapt3d predict-npz`` (model loaded
once; per step the whole image is resampled to 1.5 mm, every class encodes its crop and decodes its
clicks, and is mapped back to the input grid). The challenge's limit is 90 s per class for the 6
steps, whole container run included (model loading and npz I/O are extra in the container: the
load time is printed separately). One encoder forward is timed alone too, to compare with the
uncontended encoder figure of ``encoder_speed.py`` in the README. Prints JSON; the figures of a run on this machine are in
``benchmarks/results/cvpr25_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from adapt3d.cores import load_core
from adapt3d.data.cvpr_npz import challenge_boxes
from adapt3d.evaluate.cvpr25 import run_case
from adapt3d.evaluate.cvpr25_predict import NpzPredictor


def _triple(text: str, kind=float) -> tuple:
    values = tuple(kind(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: three comma-separated values")
    return values


def synthetic_case(shape: tuple[int, int, int], n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy 0–255 image and ``n_classes`` ellipsoids (labels 1..N) of a few cm, (z, y, x)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    gts = np.zeros(shape, np.uint8)
    for c in range(1, n_classes + 1):
        centre = [rng.uniform(0.3, 0.7) * s for s in shape]
        radii = [rng.uniform(0.08, 0.15) * s for s in shape]
        gts[((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1] = c
    imgs = np.clip(rng.normal(60, 20, shape) + 80 * (gts > 0), 0, 255).astype(np.uint8)
    return imgs, gts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=lambda t: _triple(t, int), default=(200, 384, 384), help="image (z, y, x)")
    ap.add_argument("--spacing", type=_triple, default=(0.8, 0.8, 2.5), help="voxel size (x, y, z) in mm, as the npz stores it")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_core("sam-med3d").to(args.device).eval()  # turbo architecture, random weights
    load_s = time.perf_counter() - t0
    with torch.no_grad():  # one encoder forward alone (median of 3): compare with README's uncontended encoder figure
        x = torch.randn(1, 1, 128, 128, 128, device=args.device)
        enc = []
        for _ in range(3):
            t = time.perf_counter()
            model.encode(x)
            enc.append(time.perf_counter() - t)
    imgs, gts = synthetic_case(args.shape, args.classes)
    predictor = NpzPredictor(model, target_spacing=(1.5, 1.5, 1.5))
    run = run_case(imgs, args.spacing, gts, challenge_boxes(gts), lambda inputs: predictor(inputs, "CT"))
    n = int(gts.max())
    result = {
        "command": "python benchmarks/cvpr25_cost.py " + " ".join(
            f"--{k} {','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in vars(args).items()),
        "core": "SAM-Med3D turbo architecture (100.5 M parameters), random weights",
        "image_zyx": list(args.shape), "spacing_xyz_mm": list(args.spacing), "classes": n,
        "device": args.device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "platform": platform.platform(),
        "model_load_s": round(load_s, 2), "encoder_forward_128_s": round(float(np.median(enc)), 2), "step_s": [round(s, 2) for s in run.seconds],
        "total_6_steps_s": round(sum(run.seconds), 2), "per_class_6_steps_s": round(sum(run.seconds) / n, 2),
        "challenge_limit_per_class_s": 90,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
