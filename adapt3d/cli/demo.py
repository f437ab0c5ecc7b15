"""``adapt3d demo``: adapt the demo core to MRI and simulated ultrasound, offline, in minutes."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole pipeline on the embedded sample data (offline, a few minutes on a CPU)"
DESCRIPTION = """\
The whole product on small real data shipped with adapt3d (datasets/sample, with attribution):

  1. render a SIMULATED 3D ultrasound from the embedded abdominal MRI;
  2. LoRA-adapt the demo core — a small SAM-Med3D-architecture model adapt3d trained on the
     embedded CT (NOT SAM-Med3D's pretrained weights) — to the MRI and to the simulated
     ultrasound, with declared held-out organs, evaluating before/after at 1/3/5/10 clicks
     and tracking CT Dice retention on CT organs the core never trained on. The ultrasound
     adaptation first runs the context head's self-supervised stage on REAL ultrasound (the
     unlabelled spine-phantom sweep in datasets/sample); its labelled volumes are simulated;
  3. write the cross-domain report (HTML + Markdown + JSON), the adapters, and the MRI adapter
     merged into official-format SAM-Med3D weights; print the summary table.

With --core, the same runs on a real SAM-Med3D checkpoint (1.5 mm, 128³ crops; slower).
--build-core retrains the demo core (its recorded build: 2,233 s ≈ 37 min on a 2-core CPU, 80 epochs;
see datasets/sample/demo_core/demo_core_metrics.json).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_output", metavar="DIR", help="output folder (default: ./demo_output)")
    p.add_argument("--core", metavar="CKPT", help="a SAM-Med3D checkpoint to use instead of the demo core")
    p.add_argument("--epochs", type=int, help="training epochs per adaptation (default: from the demo configs)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a previous demo output")
    p.add_argument("--build-core", action="store_true", help="retrain the demo core on the embedded CT, then stop")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt3d.demo import build_demo_core, run_demo

    if args.build_core:
        path = build_demo_core()
        print(f"wrote the demo core: {path}")
        return 0
    run_demo(Path(args.out), core=args.core, overwrite=args.overwrite, epochs=args.epochs)
    return 0
