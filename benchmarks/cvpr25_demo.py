"""The CVPR 2025 challenge protocol on the embedded MRI: demo core before/after the shipped MRI adapter,
beside the box-fill baseline. Writes the run directory (for ``adapt3d report``) and a JSON summary.

    python benchmarks/cvpr25_demo.py [--out runs/cvpr25_demo_mri] [--json benchmarks/results/cvpr25_demo.json]

Data: datasets/sample/Dataset002_TotalSegExampleMR (one 3 mm MRI, silver-standard labels), the five
organs the demo adapter held out of its training (spleen, kidney_left, gallbladder, pancreas, aorta),
evaluated together as one 5-class image, as the challenge scores an image. Core: the demo core (trained
by adapt3d on one CT, not SAM-Med3D's weights), at its 3 mm working spacing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapt3d.data.domain_config import DomainSection
from adapt3d.data.domains import load_domain
from adapt3d.evaluate.cvpr25_run import Cvpr25Protocol, evaluate_items_cvpr25
from adapt3d.evaluate.run import run_evaluation
from adapt3d.runs import write_json

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "datasets/sample/demo_core/demo_core.safetensors"
ADAPTER = ROOT / "adapters/demo-mri-lora"
DATA = ROOT / "datasets/sample/Dataset002_TotalSegExampleMR"
CLASSES = ("spleen", "kidney_left", "gallbladder", "pancreas", "aorta")
DESCRIPTION = ("adapt3d demo core: a small SAM-Med3D-architecture model (0.74 M parameters) trained from scratch by adapt3d "
               "on ONE CT volume (TotalSegmentator example CT, silver-standard labels). Not SAM-Med3D's pretrained weights.")


def _figures(ev: dict) -> dict:
    ch = ev["challenge"]
    return {"DSC_AUC": ch["DSC_AUC"]["mean"], "NSD_AUC": ch["NSD_AUC"]["mean"], "DSC_Final": ch["DSC_Final"]["mean"],
            "NSD_Final": ch["NSD_Final"]["mean"], "DSC_per_step": [ev["summary"][s]["dice"]["mean"] for s in map(str, ev["clicks"])],
            "NSD_per_step": [ev["summary"][s]["nsd"]["mean"] for s in map(str, ev["clicks"])],
            "seconds_per_class": ch["time_per_class_s"]["mean"], "prompt_strategy": ev["prompt_strategy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs/cvpr25_demo_mri"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/cvpr25_demo.json"))
    args = ap.parse_args()
    domain = DomainSection(path=str(DATA), name="mri", classes=CLASSES, silver_standard=True, min_voxels=300)
    t0 = time.time()
    run_dir = run_evaluation(core=str(CORE), adapter=str(ADAPTER), domain=domain, protocol="cvpr25", options={}, out=Path(args.out),
                             core_description=DESCRIPTION, overwrite=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())["domains"]["mri"]
    dom = load_domain(domain, "target", seed=0, all_test=True)
    baseline = evaluate_items_cvpr25(None, dom.split.test, dom.modality, Cvpr25Protocol(strategy="box-fill"))
    result = {
        "command": "python benchmarks/cvpr25_demo.py", "data": f"{DATA.name}: {', '.join(CLASSES)} (one image, 5 classes)",
        "core": DESCRIPTION, "adapter": str(ADAPTER.relative_to(ROOT)), "run_dir": str(Path(run_dir).resolve().relative_to(ROOT)) if Path(run_dir).resolve().is_relative_to(ROOT) else str(run_dir), "wall_seconds": round(time.time() - t0, 1),
        "box-fill baseline": _figures(baseline), "demo core (before)": _figures(metrics["before"]),
        "demo core + MRI LoRA (after)": _figures(metrics["after"]),
        "note": "CPU, 2 cores shared with other jobs: times are contended. AUC maximum is 4 (trapezoid over 5 click steps).",
    }
    write_json(Path(args.json), result)
    print(f"{'':32}{'DSC_AUC':>9}{'NSD_AUC':>9}{'DSC_fin':>9}{'NSD_fin':>9}   DSC per step (1 = box)")
    for key in ("box-fill baseline", "demo core (before)", "demo core + MRI LoRA (after)"):
        r = result[key]
        steps = " ".join(f"{100 * v:5.1f}" for v in r["DSC_per_step"])
        print(f"{key:32}{r['DSC_AUC']:9.3f}{r['NSD_AUC']:9.3f}{100 * r['DSC_Final']:9.1f}{100 * r['NSD_Final']:9.1f}   {steps}")
    print(f"wrote {args.json} and {run_dir}")


if __name__ == "__main__":
    main()
