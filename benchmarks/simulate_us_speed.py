"""Simulated-ultrasound rendering speed (``adapt3d.data.simulate_us.simulate_ultrasound``).

Renders seeded noise volumes of the given shapes (1 × 1 × 2 mm voxels, probe on the +k face) and
prints the median wall time of --repeats renders per shape as JSON.

    python benchmarks/simulate_us_speed.py                        # 128×128×64, the size the tests use
    python benchmarks/simulate_us_speed.py --shape 256,256,128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _shape(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3 or min(values) < 8:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be three sizes ≥ 8, e.g. 128,128,64")
    return values  # type: ignore[return-value]


def main() -> None:
    from adapt3d.data.imageio import Volume
    from adapt3d.data.simulate_us import UltrasoundParams, simulate_ultrasound

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_shape, action="append", help="volume shape i,j,k (repeatable; default 128,128,64)")
    parser.add_argument("--repeats", type=int, default=3, help="renders per shape (default: 3)")
    args = parser.parse_args()
    results = []
    for shape in args.shape or [(128, 128, 64)]:
        array = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
        volume = Volume(array, np.diag([1.0, 1.0, 2.0, 1.0]))
        times = []
        for seed in range(args.repeats):
            start = time.perf_counter()
            simulate_ultrasound(volume, seed=seed, params=UltrasoundParams(probe_axis="+k"))
            times.append(time.perf_counter() - start)
        results.append({"shape": list(shape), "median_s": round(statistics.median(times), 3), "repeats": args.repeats})
    print(json.dumps({"benchmark": "simulate_us_speed", "results": results}, indent=1))


if __name__ == "__main__":
    main()
