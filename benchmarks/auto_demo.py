"""Automatic (class prompt, 0 clicks) vs 1-click Dice on the embedded spinal-cord MR, split by case.

The demo core (datasets/sample/demo_core: a small SAM-Med3D-architecture model trained by adapt3d
on ONE CT volume, never on MRI or on the spinal cord) is adapted on the T1-weighted case
(Dataset003_SpinalCordMR/sct_t1w) and tested on the T2-weighted case (sct_t2w), in two variants:

* ``prompts only``: adapter method ``none`` (the core stays frozen), only the class prompts train;
* ``lora + prompts``: LoRA adapters and the class prompts train together.

Each run evaluates the frozen core (before) and the trained model (after) at 1 and 3 clicks, and
after training the automatic masks (click count 0, class prompt alone, whole volume). The time per
volume of ``predict --auto`` (all windows, resampling back included) is measured on the test case.

    python -m benchmarks.auto_demo --out /tmp/auto_bench            # writes benchmarks/results/auto_demo.json
    python -m benchmarks.auto_demo --out /tmp/auto_bench24 --epochs 24 --variant "lora + prompts" \
        --results benchmarks/results/auto_demo_24ep.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from adapt3d.demo import DEMO_CORE, SAMPLE

REPO = Path(__file__).resolve().parents[1]
CORD = SAMPLE / "Dataset003_SpinalCordMR"
TEST_IMAGE = CORD / "imagesTr" / "sct_t2w_0000.nii.gz"
VARIANTS = {
    "prompts only": {"method": "none"},
    "lora + prompts": {"method": "lora", "rank": 8, "alpha": 16, "targets": ["encoder.qkv", "decoder.attn"]},
}


def experiment(out: Path, name: str, adapter: dict, *, epochs: int, spacing: float) -> dict:
    """The experiment of one variant (as a plain mapping, the YAML an adapt3d user would write)."""
    return {
        "name": name, "seed": 0, "output_dir": str(out / "runs"),
        "core": {"checkpoint": str(DEMO_CORE), "description": "adapt3d demo core: small SAM-Med3D-architecture model trained "
                 "from scratch by adapt3d on ONE CT volume (TotalSegmentator example CT, silver-standard labels)"},
        "adapter": adapter,
        "data": {"target": {"path": str(CORD), "name": "cord", "test": {"cases": ["sct_t2w"]}},
                 "target_spacing": [spacing] * 3},
        "train": {"epochs": epochs, "samples_per_item": 16, "batch_size": 4, "lr": 2e-3, "warmup_steps": 5,
                  "click_rounds": 3, "accelerator": "cpu"},
        "eval": {"clicks": [1, 3], "val_clicks": [1], "every_n_epochs": epochs, "save_predictions": False},
        "retention": {"action": "none"},
        "auto": {"enabled": True, "tokens_per_class": 2, "random_crops": 1},
    }


def seconds_per_volume(run: Path, spacing: float, repeats: int = 3) -> float:
    """Median wall time of automatic prediction of the test volume with the run's adapter and prompts."""
    from adapt3d import load_core
    from adapt3d.auto import load_class_prompts
    from adapt3d.auto.predict import predict_auto
    from adapt3d.data.imageio import load_volume
    from adapt3d.infer.whole_volume import WholeVolumeConfig
    from adapt3d.tuners import load_adapter

    model = load_adapter(load_core("sam-med3d", DEMO_CORE), run / "adapter")
    prompts = load_class_prompts(run / "adapter")
    image = load_volume(TEST_IMAGE)
    config = WholeVolumeConfig(spacing=spacing, normalization=model.preprocessing.normalization)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_auto(model, prompts, image, "MR", config)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def mean_dice(ev: dict | None, k: str) -> float | None:
    """The mean Dice at click count ``k`` of an EVAL record (None when not evaluated)."""
    s = (ev or {}).get("summary", {}).get(k, {}).get("dice")
    return None if s is None or s.get("mean") is None else s["mean"]


def main(argv: list[str] | None = None) -> int:
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--spacing", type=float, default=1.5, help="working spacing in mm (default 1.5: the cord is ~3 voxels wide at 3 mm)")
    p.add_argument("--variant", action="append", choices=list(VARIANTS), help="run only this variant (repeatable; default: all)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "auto_demo.json")
    args = p.parse_args(argv)
    import yaml

    rows = []
    for label, adapter in VARIANTS.items():
        if args.variant and label not in args.variant:
            continue
        name = label.replace(" + ", "_").replace(" ", "_")
        path = args.out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(experiment(args.out, name, adapter, epochs=args.epochs, spacing=args.spacing)))
        t0 = time.time()
        run = run_adaptation(load_experiment(path), overwrite=True)
        wall = time.time() - t0
        metrics = json.loads((run / "metrics.json").read_text())
        dom = metrics["domains"]["cord"]
        rows.append({
            "variant": label, "steps": metrics["training"]["steps"], "run_seconds": round(wall, 1),
            "trainable_parameters": metrics["adapter"].get("trainable_parameters"),
            "before_1": mean_dice(dom["before"], "1"), "before_3": mean_dice(dom["before"], "3"),
            "auto": mean_dice(dom["after"], "0"), "after_1": mean_dice(dom["after"], "1"), "after_3": mean_dice(dom["after"], "3"),
            "auto_seconds_per_volume": round(seconds_per_volume(run, args.spacing), 2),
        })
        print(json.dumps(rows[-1]))
    write_results(args.results, {"data": "Dataset003_SpinalCordMR: train sct_t1w (T1w), test sct_t2w (T2w), manual spinal-cord masks",
                                 "core": "demo core (trained by adapt3d on one CT volume; never saw MRI or the spinal cord)",
                                 "spacing_mm": args.spacing, "epochs": args.epochs, "rows": rows})
    return 0


def write_results(path: Path, record: dict) -> None:
    """Write a benchmark's JSON record and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
