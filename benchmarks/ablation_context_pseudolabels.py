"""Ablation of the recipe's helpers on the embedded MRI with the demo core (issue 7).

Annotation budget: keyframes every K slices of the training organs of the embedded abdominal MRI
(TotalSegmentator silver-standard labels). Four LoRA runs, each evaluated on the five held-out
organs (dense labels) at 1/3/5/10 clicks, with CT retention on the core's held-out CT organs:

  A  LoRA on the keyframes only (non-keyframe voxels = ignore label, masked out of the loss)
  B  A + VoCo context head (EMA teacher)
  C  LoRA on pseudo-labels propagated from the keyframes by the frozen demo core ("core" backend)
  D  C + context head

    PYTHONPATH=. python benchmarks/ablation_context_pseudolabels.py --out runs/ablation
Writes the four runs, the pseudo-label QC, `adapt3d report` of the four runs and results.json
(Dice per click count before/after, CT retention, context-head settings, wall time) to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MR = REPO / "datasets" / "sample" / "Dataset002_TotalSegExampleMR"
CORE = REPO / "datasets" / "sample" / "demo_core" / "demo_core.safetensors"


def keyframes_only(out: Path, every: int) -> Path:
    """The MRI with only every ``every``-th slice annotated (the rest = ignore)."""
    from adapt3d.data.nnunet import load_case, read_dataset
    from adapt3d.pseudolabel import auto_axis, sparsify
    from adapt3d.pseudolabel.dataset import source_labels
    from adapt3d.pseudolabel.writer import PseudolabelWriter

    ds = read_dataset(MR)
    labels, _ = source_labels(ds)
    writer = PseudolabelWriter(out, "Dataset903_KeyframesOnlyMR", ds, labels, 255)
    axes = []
    for case in ds.labelled:
        image, label = load_case(case)
        axes.append(auto_axis(label.shape, label.spacing))
        sparse = sparsify(label.array, axis=axes[-1], every=every)
        writer.add(case, sparse.to_ignore(255), label)
    settings = {"backend": "none: keyframes only, every other voxel ignored", "every": every, "axis": axes[0],
                "ignore": 255, "uncertain": [0.0, 1.0]}
    writer.finish(settings, {"cases": []})
    return out


def main() -> None:
    from adapt3d.cli import main as cli
    from adapt3d.report import write_report
    from adapt3d.summary import summary_lines
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation", type=Path)
    parser.add_argument("--every", type=int, default=4, help="keyframe spacing in slices (default: 4)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="experiment seed (splits, crops, clicks, init)")
    parser.add_argument("--conditions", nargs="+", default=["A", "B", "C", "D"], help="which of A B C D to run")
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    sparse = keyframes_only(out / "data" / "keyframes", args.every)
    pseudo = out / "data" / "pseudo_core"
    assert cli(["pseudolabel", "--data", str(MR), "--every", str(args.every), "--backend", "core", "--core", str(CORE),
                "--out", str(pseudo)]) == 0
    conditions = {
        "A_lora_keyframes": [f"pseudolabel.path={sparse}"],
        "B_lora_keyframes_context": [f"pseudolabel.path={sparse}", "context_head.enabled=true"],
        "C_lora_pseudolabels": [f"pseudolabel.path={pseudo}"],
        "D_lora_pseudolabels_context": [f"pseudolabel.path={pseudo}", "context_head.enabled=true"],
    }
    runs, results = [], {"seed": args.seed, "every": args.every, "epochs": args.epochs, "conditions": {}}
    for name, extra in conditions.items():
        if name[0] not in args.conditions:
            continue
        cfg = load_experiment(REPO / "configs" / "experiment" / "demo_mr_lora.yaml", [
            f"name={name}", f"output_dir={out / 'runs'}", f"train.epochs={args.epochs}", f"seed={args.seed}",
            "pseudolabel.enabled=true", "pseudolabel.mode=replace", "context_head.random_crops=2", *extra,
        ])
        t0 = time.time()
        runs.append(run_adaptation(cfg, overwrite=True))
        results["conditions"][name] = _result(runs[-1], time.time() - t0)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(runs, out / "report", overwrite=True, title="Ablation: context head and keyframe pseudo-labels")
    qc = json.loads((pseudo / "qc.json").read_text())
    print(json.dumps({k: v for k, v in qc.items() if k != "cases"}, indent=1)[:1500])
    for run in runs:
        print(f"\n== {run.name}")
        print("\n".join(summary_lines(json.loads((run / "metrics.json").read_text()))))
    print(f"\nreport: {out / 'report' / 'report.html'}")


def _result(run: Path, seconds: float) -> dict:
    """The figures of one condition: target Dice (x100) per click count before/after, retention."""
    metrics = json.loads((run / "metrics.json").read_text())
    target = next(d for d in metrics["domains"].values() if d.get("role") == "target")
    dice = {stage: {k: round(100 * v["dice"]["mean"], 1) for k, v in target[stage]["summary"].items()}
            for stage in ("before", "after")}
    ret = metrics.get("retention") or {}
    return {"dice": dice, "retention": ret.get("final"), "steps": metrics["training"]["steps"],
            "context_head": metrics["training"].get("context_head"), "wall_seconds": round(seconds, 1)}


if __name__ == "__main__":
    main()
