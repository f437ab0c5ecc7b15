"""Image-encoder speed: adapt3d's SAM-Med3D core vs the official architecture (PyPI ``medim``).

Same random weights (relative-position tables and biases non-zero), same process, same 128³
input. Prints per-call times (median of --repeats after a warm-up), the speed ratio and the
largest absolute difference of the embeddings. Needs the test extra (``pip install -e .[test]``).

    python benchmarks/encoder_speed.py                       # CPU, fp32
    python benchmarks/encoder_speed.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _timed(fn, x, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    out = fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    import medim

    from adapt3d import load_core

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    ref = medim.create_model("SAM-Med3D", pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if "rel_pos" in name or name.endswith("qkv.bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    ours = load_core("sam-med3d")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(args.batch, 1, 128, 128, 128, generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with torch.inference_mode(), autocast:
        t_ours, e_ours = _timed(ours.image_encoder, x, args.repeats, device)
        t_ref, e_ref = _timed(ref.image_encoder, x, args.repeats, device)
    diff = (e_ours.float() - e_ref.float()).abs().max().item()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "batch": args.batch,
        "official_ms": round(1000 * t_ref, 1),
        "adapt3d_ms": round(1000 * t_ours, 1),
        "speedup": round(t_ref / t_ours, 2),
        "max_abs_diff": diff,
        "embedding_max_abs": e_ref.float().abs().max().item(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
