"""Training-step cost per adapter method on the full-size SAM-Med3D core (random weights).

For each method: trainable parameters, median step time (encoder + 1 click round + backward +
AdamW step) and peak memory (GPU: max allocated; CPU: peak RSS of a fresh subprocess per method).

    python benchmarks/train_step.py                          # CPU, fp32, batch 2, 128³
    python benchmarks/train_step.py --device cuda --precision bf16 --grad-checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

METHODS = ["none", "lora", "dora", "adapter", "adaptformer", "full"]


def measure(method: str, args: argparse.Namespace) -> dict:
    from adapt3d import load_core
    from adapt3d.train.losses import dice_ce_loss
    from adapt3d.tuners import AdapterConfig, AdaptedModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = AdaptedModel(load_core("sam-med3d"))
    if method != "none":
        model.add(AdapterConfig(method=method, rank=args.rank))
    model.to(device)
    model.core.image_encoder.grad_checkpointing = args.grad_checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    x = torch.randn(args.batch, 1, 128, 128, 128, device=device)
    target = (torch.rand(args.batch, 1, 128, 128, 128, device=device) > 0.7).float()
    points = torch.full((args.batch, 1, 3), 64.0, device=device)
    labels = torch.ones(args.batch, 1, dtype=torch.int64, device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
            emb = model.encode(x)
            low, _ = model.decode(emb, points, labels)
            up = torch.nn.functional.interpolate(low.float(), size=(128,) * 3, mode="trilinear")
            loss = dice_ce_loss(up, target)
        if optimizer is not None:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    report = model.trainable_report()
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "method": method,
        "trainable_parameters": report["trainable_parameters"],
        "trainable_percent": round(report["trainable_percent"], 3),
        "step_ms": round(1000 * statistics.median(times), 1),
        "peak_memory_gib": round(peak, 2),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one method in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--device", args.device, "--precision", args.precision,
               "--batch", str(args.batch), "--rank", str(args.rank), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--grad-checkpointing"] if args.grad_checkpointing else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{name}, {args.precision}, batch {args.batch}, 128³, grad checkpointing {args.grad_checkpointing}")
    print(f"{'method':<12}{'trainable':>14}{'%':>9}{'step ms':>10}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['method']:<12}{r['trainable_parameters']:>14,}{r['trainable_percent']:>9}{r['step_ms']:>10}{r['peak_memory_gib']:>10}")


if __name__ == "__main__":
    main()
