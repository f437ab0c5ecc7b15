"""SegVol at full size through ``adapt3d adapt``: a release-layout checkpoint (random weights) adapted
with LoRA from the template ``configs/experiment/ct_to_mr_segvol.yaml`` for one short epoch on
the embedded MRI, then exported merged; checks that the export has exactly the release's keys.

Random weights: the figures say the pipeline runs at the released size and what it costs, not
how well SegVol adapts (the released weights cannot be downloaded here).

    python benchmarks/segvol_full_size.py --work /tmp/segvol_full [--json benchmarks/results/segvol_full_size.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adapt3d.cli import main
from adapt3d.cores import load_core
from adapt3d.cores.segvol import SegVol

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "sample"
TEMPLATE = ROOT / "configs" / "experiment" / "ct_to_mr_segvol.yaml"


def release_checkpoint(path: Path) -> int:
    """A full-size SegVol (module initialisation, seed 0) in the release layout: ``model.`` + key."""
    torch.manual_seed(0)
    state = SegVol().state_dict()
    torch.save({"model." + k: v for k, v in state.items()}, path)
    return len(state)


def run(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "pytorch_model.bin"
    t0 = time.time()
    n_keys = release_checkpoint(ckpt)
    overrides = [
        f"core.checkpoint={ckpt}", f"output_dir={work / 'runs'}", "name=segvol_full",
        f"data.target.path={SAMPLE / 'Dataset002_TotalSegExampleMR'}", "data.target.classes=[liver,spleen]",
        "data.target.test.classes=[spleen]", "data.target.silver_standard=true", "data.target.min_voxels=300",
        f"data.reference.path={SAMPLE / 'Dataset001_TotalSegExampleCT'}", "data.reference.classes=[spleen]",
        "data.reference.silver_standard=true",
        "train.epochs=1", "train.samples_per_item=1", "train.batch_size=1", "train.click_rounds=1",
        "train.precision=32-true", "train.accelerator=cpu", "train.warmup_steps=0",
        "eval.clicks=[1]", "eval.val_clicks=[1]", "eval.every_n_epochs=1", "eval.save_predictions=false",
    ]
    t1 = time.time()
    rc = main(["adapt", "--config", str(TEMPLATE), *overrides])
    adapt_s = time.time() - t1
    run_dir = work / "runs" / "segvol_full"
    merged = work / "merged.bin"
    rc_export = main(["export", "--core", str(ckpt), "--core-type", "segvol", "--adapter", str(run_dir / "adapter"),
                      "--out", str(merged), "--overwrite"]) if rc == 0 else None
    exported = torch.load(merged, weights_only=True) if rc_export == 0 else {}
    release = {"model." + k for k in load_core("segvol").state_dict()}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if rc == 0 else {}
    mr = metrics.get("domains", {}).get("TotalSegExampleMR", {})
    return {
        "release_keys": n_keys, "adapt_exit": rc, "export_exit": rc_export, "adapt_seconds": round(adapt_s, 1),
        "checkpoint_seconds": round(t1 - t0, 1),
        "export_keys": len(exported), "export_keys_equal_release": set(exported) == release,
        "trainable_parameters": metrics.get("adapter", {}).get("trainable_parameters"),
        "steps": (metrics.get("training") or {}).get("steps"),
        "clicks": mr.get("after", {}).get("clicks"),
        "mr_dice_before": {k: v["dice"]["mean"] for k, v in mr.get("before", {}).get("summary", {}).items()},
        "mr_dice_after": {k: v["dice"]["mean"] for k, v in mr.get("after", {}).get("summary", {}).items()},
        "retention": (metrics.get("retention") or {}).get("final"),
        "merged_retention": ((metrics.get("retention") or {}).get("merged") or {}).get("final"),
    }


def main_cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder (a 0.7 GB checkpoint is written there)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    result = run(args.work)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main_cli()
