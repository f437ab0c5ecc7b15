"""Data loading and training throughput (volumes/s) of `adapt3d adapt` on the embedded sample.

Data: object-centred crops from the embedded CT (cached after the first read), with the demo's
augmentation. Train: the demo core (or the full-size SAM-Med3D architecture with --full-size)
with LoRA r=8, batch 4, the configured click rounds.

    python benchmarks/train_throughput.py                 # CPU
    python benchmarks/train_throughput.py --full-size     # 128³ SAM-Med3D architecture
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from adapt3d import load_core
    from adapt3d.data.domains import load_domain
    from adapt3d.train.config import TrainSection, load_experiment
    from adapt3d.train.data import CropDataset
    from adapt3d.train.module import AdaptModule
    from adapt3d.tuners import AdaptedModel, AdapterConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-size", action="store_true", help="SAM-Med3D turbo architecture at 128³ (random weights)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--click-rounds", type=int, default=4)
    args = parser.parse_args()
    cfg = load_experiment(REPO / "configs" / "experiment" / "demo_core_ct.yaml")
    domain = load_domain(cfg.data.target, "target", seed=0)
    arch = {} if args.full_size else dict(cfg.core.arch)
    core = load_core("sam-med3d", **arch)
    spacing = (1.5, 1.5, 1.5) if args.full_size else tuple(cfg.data.target_spacing)
    data = CropDataset(domain.split.train, domain.modality, size=core.image_size, target_spacing=spacing,
                       normalization="sam-med3d", seed=0, samples_per_item=100)
    data[0]  # first read + resampling, cached afterwards
    n = args.steps * args.batch
    t0 = time.perf_counter()
    samples = [data[i] for i in range(n)]
    load_rate = n / (time.perf_counter() - t0)

    device = torch.device(args.device)
    model = AdaptedModel(core)
    model.add(AdapterConfig(method="lora", rank=8))
    module = AdaptModule(model, TrainSection(click_rounds=args.click_rounds), 0).to(device)
    opt = torch.optim.AdamW(model.param_groups(0.01), lr=1e-3)
    rng = np.random.default_rng(0)
    times = []
    for step in range(args.steps + 1):
        chunk = samples[(step % args.steps) * args.batch : (step % args.steps + 1) * args.batch]
        batch = {k: torch.stack([s[k] for s in chunk]).to(device) for k in chunk[0]}
        t = time.perf_counter()
        loss = module.segmentation_loss(model.encode(batch["image"]), batch, rng)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms kernels up
            times.append(time.perf_counter() - t)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "core": "sam-med3d turbo architecture 128³" if args.full_size else "demo core 64³",
        "data_volumes_per_s": round(load_rate, 1),
        "train_volumes_per_s": round(args.batch / float(np.median(times)), 2),
        "step_ms": round(1000 * float(np.median(times)), 1),
        "batch": args.batch, "click_rounds": args.click_rounds,
    }, indent=2))


if __name__ == "__main__":
    main()
