"""``adapt3d evaluate``: N-click Dice/NSD of a core (optionally adapted) on an nnU-Net raw dataset."""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "N-click evaluation (Dice, NSD) of a core, with or without an adapter, on any nnU-Net raw dataset"
DESCRIPTION = """\
Run the interactive N-click protocol on every labelled object of a dataset: the first click at
the object's deepest interior point, each next click at the centre of the largest error region
(positive for a miss, negative for a false positive), the previous low-res mask fed back. Dice
and NSD are computed on the input grid, per class, per case, as mean ± sd at each click count.

Images are resampled and normalised as the core's checkpoint says (its stored preprocessing,
else the core's published one: SAM-Med3D 1.5 mm); --spacing / --normalization override it.

Without --adapter the frozen core is evaluated; with it, both the frozen core ("before") and
the adapted model ("after"). Writes OUT/metrics.json, env.json and predictions/ (open the
masks in 3D Slicer / ITK-SNAP over the images); `adapt3d report OUT` turns it into a report.

A 2D core (--core-type sam2d: Segment Anything, e.g. sam_vit_b_01ec64.pth) is evaluated slice
by slice along --slice-axis: every slice holding the object gets its own N clicks (the same
click simulation, in 2D), slices are predicted independently and stacked, and Dice/NSD are
computed on the input grid as for 3D; each case also records the clicks used in total.

example:
  adapt3d evaluate --core sam_med3d_turbo.pth --data Dataset002_MR --clicks 1,3,5,10 --out runs/mr_eval
  adapt3d evaluate --core sam_vit_b_01ec64.pth --core-type sam2d --data Dataset002_MR --out runs/mr_2d
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated whole numbers, e.g. 1,3,5,10") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: click counts must be ≥ 1")
    return values


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing {text!r} must be one or three numbers in mm, e.g. 1.5 or 1.5,1.5,3") from None
    if len(values) not in (1, 3) or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"spacing {text!r} must be one or three positive numbers in mm")
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]


def _normalization(text: str) -> str:
    from adapt3d.data.preprocess import NORMALISERS

    if text not in NORMALISERS:
        raise argparse.ArgumentTypeError(f"unknown normalisation {text!r}; valid: {', '.join(NORMALISERS.names())}")
    return text


def _axis(text: str) -> int:
    from adapt3d.evaluate.slicewise import slice_axis_index

    try:
        return slice_axis_index(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--core", required=True, metavar="CKPT", help="core checkpoint")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture: sam-med3d (default), segvol, or sam2d (slice-wise)")
    p.add_argument("--core-description", default="", help="what the core was trained on (stated in reports)")
    p.add_argument("--adapter", metavar="DIR", help="adapter directory; omit to evaluate the frozen core")
    p.add_argument("--data", required=True, metavar="DIR", help="nnU-Net raw dataset (dataset.json, imagesTr, labelsTr)")
    p.add_argument("--classes", default="", help="comma-separated class names (default: all present)")
    p.add_argument("--modality", default="auto", help="CT, MR or US (default: from dataset.json)")
    p.add_argument("--simulated", action="store_true", help="the data is simulated (e.g. rendered ultrasound)")
    p.add_argument("--silver-standard", action="store_true", help="the labels are model predictions")
    p.add_argument("--protocol", default="nclick", choices=["nclick", "cvpr25"],
                   help="nclick (default) or cvpr25: the CVPR 2025 challenge's box + 5 clicks, DSC/NSD AUC (docs/cvpr25.md); "
                        "--clicks and --simulator do not apply to it")
    p.add_argument("--clicks", type=_ints, default=(1, 3, 5, 10), help="click counts to report (default: 1,3,5,10)")
    p.add_argument("--simulator", default="center", help="click simulator: center (default) or random")
    p.add_argument("--slice-axis", type=_axis, metavar="AXIS",
                   help="2D cores: slice orientation, axial (default), coronal, sagittal or RAS axis 0/1/2")
    p.add_argument("--text", action="store_true",
                   help="SegVol: also prompt with the class names of dataset.json (adds click count 0: text alone)")
    p.add_argument("--auto", action="store_true",
                   help="with --adapter trained with auto.enabled: adds click count 0, the automatic masks of its class prompts (docs/auto.md)")
    p.add_argument("--tokenizer", metavar="DIR", help="SegVol: CLIP tokenizer folder for --text (default: CLIP's, built in)")
    p.add_argument("--spacing", type=_spacing, metavar="MM",
                   help="working voxel spacing in mm, one value or three (default: the core's own, from its checkpoint)")
    p.add_argument("--normalization", type=_normalization, metavar="NAME",
                   help="intensity normalisation, e.g. sam-med3d or modality (default: the core's own)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM", help="NSD tolerance in mm (default: 2)")
    p.add_argument("--min-voxels", type=int, default=100, help="skip objects smaller than this (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-predictions", action="store_true", help="do not write predicted masks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run at --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt3d.data.domain_config import DomainSection
    from adapt3d.evaluate.run import run_evaluation

    domain = DomainSection(
        path=args.data, classes=tuple(c for c in args.classes.split(",") if c), modality=args.modality,
        simulated=args.simulated, silver_standard=args.silver_standard, min_voxels=args.min_voxels,
    )
    options = {"clicks": args.clicks, "simulator": args.simulator, "nsd_tolerance_mm": args.nsd_tolerance, "seed": args.seed}
    if args.slice_axis is not None:
        options["slice_axis"] = args.slice_axis
    if args.text:
        options["text"] = True
    if args.tokenizer:
        options["tokenizer"] = args.tokenizer
    if args.spacing is not None:
        options["target_spacing"] = args.spacing
    if args.normalization is not None:
        options["normalization"] = args.normalization
    if args.protocol != "nclick":  # the challenge fixes its prompts: a box, then 5 clicks at the largest error
        options = {k: v for k, v in options.items() if k not in ("clicks", "simulator")}
    out = run_evaluation(
        core=args.core, core_type=args.core_type, adapter=args.adapter, domain=domain, options=options, protocol=args.protocol,
        out=Path(args.out), core_description=args.core_description, overwrite=args.overwrite,
        save_predictions=not args.no_predictions, device=args.device, **({"auto": True} if args.auto else {}),
    )
    from adapt3d.summary import print_summary

    print_summary(out)
    return 0
