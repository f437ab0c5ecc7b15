"""Automatic (class prompt, 0 clicks) vs 1-click Dice on the embedded abdominal MRI and CT, split by case.

The embedded abdomen has one MRI volume (Dataset002_TotalSegExampleMR) and one CT volume of another
subject (Dataset001_TotalSegExampleCT, the demo's CT reference), both 3 mm with TotalSegmentator
labels (silver standard). Class prompts need their class at training time, so the split is by
case (and modality), over organs present in both:

* ``MR → CT``: LoRA + class prompts (or the prompts alone on the frozen core) are trained on the
  MRI's organs; the CT volume is the test case (``adapt3d evaluate --auto``).
* ``CT → MR``: the prompts alone (frozen core) are trained on the CT's organs and tested on the MRI.

Each run is also evaluated on its own training case (``training_case_fit``: not a test, it
shows whether the prompts learned their classes at all).

The demo core (datasets/sample/demo_core) was trained by adapt3d on this very CT volume, except
for its held-out organs (spleen, kidney_left, gallbladder, pancreas, aorta, ...): CT figures of
the other organs are on the core's own training image. One test volume per direction: each figure
is a mean over its organs, not over cases.

    python -m benchmarks.auto_abdomen --out /tmp/auto_abdomen   # writes benchmarks/results/auto_abdomen.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapt3d.demo import DEMO_CORE, SAMPLE
from benchmarks.auto_demo import VARIANTS, mean_dice, write_results

REPO = Path(__file__).resolve().parents[1]
MR = SAMPLE / "Dataset002_TotalSegExampleMR"
CT = SAMPLE / "Dataset001_TotalSegExampleCT"
#: Organs labelled in both volumes (same names in both dataset.json files).
ORGANS = ["liver", "spleen", "kidney_right", "kidney_left", "stomach", "pancreas"]
#: (label, training dataset, test dataset, variant)
RUNS = [
    ("MR → CT, lora + prompts", MR, CT, "lora + prompts"),
    ("MR → CT, prompts only", MR, CT, "prompts only"),
    ("CT → MR, prompts only", CT, MR, "prompts only"),
]
CORE_NOTE = ("adapt3d demo core: small SAM-Med3D-architecture model trained from scratch by adapt3d on ONE CT volume "
             "(the TotalSegmentator example CT used here, silver-standard labels; 8 organs held out)")


def experiment(out: Path, name: str, train: Path, adapter: dict, *, epochs: int) -> dict:
    """Adapt on every organ of ``train``; the run's own test split is a class without prompt (gallbladder),
    the automatic measurement is the evaluation on the other case."""
    return {
        "name": name, "seed": 0, "output_dir": str(out / "runs"),
        "core": {"checkpoint": str(DEMO_CORE), "description": CORE_NOTE},
        "adapter": adapter,
        "data": {"target": {"path": str(train), "name": train.name.split("_")[-1], "silver_standard": True, "min_voxels": 300,
                            "classes": [*ORGANS, "gallbladder"], "test": {"classes": ["gallbladder"]}}},
        "train": {"epochs": epochs, "samples_per_item": 4, "batch_size": 4, "lr": 2e-3, "warmup_steps": 5,
                  "click_rounds": 3, "accelerator": "cpu"},
        "eval": {"clicks": [1], "val_clicks": [1], "every_n_epochs": epochs, "save_predictions": False},
        "retention": {"action": "none"},
        "auto": {"enabled": True, "tokens_per_class": 2, "random_crops": 1},
    }


def evaluate(run: Path, data: Path, out: Path, cli) -> dict:
    """``adapt3d evaluate --auto`` of a run's adapter and prompts on the organs of ``data``; its domain record."""
    assert cli(["evaluate", "--core", str(DEMO_CORE), "--core-description", CORE_NOTE, "--adapter", str(run / "adapter"),
                "--data", str(data), "--classes", ",".join(ORGANS), "--clicks", "1,3", "--silver-standard",
                "--no-predictions", "--auto", "--out", str(out), "--overwrite"]) == 0
    return next(iter(json.loads((out / "metrics.json").read_text())["domains"].values()))


def _rounded(ev: dict | None, k: str) -> float | None:
    value = mean_dice(ev, k)
    return None if value is None else round(value, 4)


def main(argv: list[str] | None = None) -> int:
    import yaml

    from adapt3d.cli import main as cli
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--run", action="append", choices=[r[0] for r in RUNS], help="only this run (repeatable; default: all)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "auto_abdomen.json")
    args = p.parse_args(argv)
    rows = []
    for label, train, test, variant in RUNS:
        if args.run and label not in args.run:
            continue
        name = label.split(",")[0].replace(" → ", "_to_") + "_" + variant.replace(" + ", "_").replace(" ", "_")
        path = args.out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(experiment(args.out, name, train, VARIANTS[variant], epochs=args.epochs)))
        t0 = time.time()
        run = run_adaptation(load_experiment(path), overwrite=True)
        train_s = time.time() - t0
        t0 = time.time()
        dom = evaluate(run, test, args.out / f"{name}_eval", cli)
        eval_s = time.time() - t0
        fit = evaluate(run, train, args.out / f"{name}_fit", cli)  # the training case itself: how well the prompts fit
        per_class = {}
        for organ in ORGANS:
            recs = [r for r in dom["after"]["per_case"] if r["class"] == organ]
            before = [r for r in dom["before"]["per_case"] if r["class"] == organ]
            if recs:
                per_class[organ] = {"auto": round(recs[0]["dice"].get("0", float("nan")), 4),
                                    "before_1": round(before[0]["dice"]["1"], 4), "after_1": round(recs[0]["dice"]["1"], 4)}
        rows.append({
            "run": label, "trained_on": train.name, "tested_on": test.name, "variant": variant,
            "steps": json.loads((run / "metrics.json").read_text())["training"]["steps"],
            "train_seconds": round(train_s, 1), "evaluate_seconds": round(eval_s, 1),
            "auto_seconds_per_volume": dom["after"]["automatic"]["seconds"][0],
            "before_1": _rounded(dom["before"], "1"), "before_3": _rounded(dom["before"], "3"),
            "auto": _rounded(dom["after"], "0"), "after_1": _rounded(dom["after"], "1"), "after_3": _rounded(dom["after"], "3"),
            "per_class": per_class,
            "training_case_fit": {"auto": _rounded(fit["after"], "0"), "after_1": _rounded(fit["after"], "1"),
                                  "before_1": _rounded(fit["before"], "1")},
        })
        print(json.dumps(rows[-1]))
    write_results(args.results, {"data": "embedded abdomen: Dataset002_TotalSegExampleMR (1 MRI) and Dataset001_TotalSegExampleCT "
                                 "(1 CT, another subject), 3 mm, TotalSegmentator labels (silver standard); split by case",
                                 "organs": ORGANS, "core": CORE_NOTE, "epochs": args.epochs, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
