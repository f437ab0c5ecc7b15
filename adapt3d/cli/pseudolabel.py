"""``adapt3d pseudolabel``: propagate keyframe annotations into full pseudo-labels, with QC."""

from __future__ import annotations

import argparse

NAME = "pseudolabel"
HELP = "turn keyframe slice annotations into full-volume pseudo-labels (nnU-Net dataset + QC)"
DESCRIPTION = """\
Propagate a few annotated keyframe slices per volume into full-volume pseudo-labels and write
them as an nnU-Net v2 raw dataset (images copied, labelsTr = pseudo-labels, dataset.json with an
"ignore" label), plus qc.json and PSEUDOLABELS.md (they are silver standard, not manual labels).

Input: an nnU-Net v2 raw dataset (--data). For each labelled training case:
  * sparse annotation: a label file whose unlabelled voxels are 255 (or the dataset.json
    "ignore" id) and whose labelled voxels fill whole slices (the keyframes) is propagated as is;
  * full annotation: only keyframes are kept (--keyframes N evenly spaced over the slices
    holding foreground, or --every K slices over the whole volume), the rest is hidden and
    propagated, and qc.json reports the pseudo-labels' Dice on the hidden slices.

Backends: core (click prompts from each keyframe to a SAM-Med3D-format core, --core CKPT, at
the spacing and normalisation stored with the core,
optionally --adapter DIR), seggpt (SegGPT in-context propagation, --seggpt DIR with a local
transformers SegGPT), nearest (non-learned baseline: nearest keyframe's mask copied).

Voxels whose probability lies in the uncertain band (--uncertain LOW,HIGH) become the ignore
label; keyframe voxels keep their annotation. Slice axis auto: the thick-slice axis of an
anisotropic volume, else the axis with the fewest slices.

example:
  adapt3d pseudolabel --data Dataset003_SpinalCordMR --every 5 --axis 1 --backend core \\
      --core sam_med3d_turbo.pth --out Dataset103_SpinalCordPseudo
"""


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"uncertain band {text!r} must be two numbers LOW,HIGH") from None
    return low, high


def _axis(text: str) -> int | None:
    if text == "auto":
        return None
    if text not in ("0", "1", "2"):
        raise argparse.ArgumentTypeError(f"axis {text!r} must be auto, 0, 1 or 2")
    return int(text)


def _ignore(text: str) -> int | None:
    if text == "next":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ignore id {text!r} must be an integer or 'next'") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="nnU-Net v2 raw dataset (labelsTr: full labels or sparse ones with 255 = unlabelled)")
    spacing = p.add_mutually_exclusive_group()
    spacing.add_argument("--keyframes", type=int, metavar="N", help="keep N evenly spaced keyframes of each fully labelled case")
    spacing.add_argument("--every", type=int, metavar="K", help="keep every K-th slice of each fully labelled case")
    p.add_argument("--backend", default="core", help="propagation backend: core, seggpt or nearest (default: core)")
    p.add_argument("--core", metavar="CKPT", help="core checkpoint (backend core)")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture (default: sam-med3d)")
    p.add_argument("--adapter", metavar="DIR", help="adapter directory to load onto the core (backend core)")
    p.add_argument("--seggpt", metavar="DIR", help="local SegGPT weights directory, transformers format (backend seggpt)")
    p.add_argument("--axis", type=_axis, default=None, metavar="auto|0|1|2", help="slice axis of the keyframes (default: auto)")
    p.add_argument("--uncertain", type=_band, default=(0.3, 0.7), metavar="LOW,HIGH", help="probabilities strictly between become ignore (default: 0.3,0.7)")
    p.add_argument("--ignore-id", type=_ignore, default=255, metavar="ID|next", help="ignore label id written (default: 255; 'next' = highest label + 1, as nnU-Net v2 requires)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset folder (e.g. Dataset103_MyPseudo)")


def run(args: argparse.Namespace) -> int:
    from adapt3d.atomic import refuse_existing
    from adapt3d.pseudolabel import Resources, backend_options, pseudolabel_dataset

    refuse_existing(args.out, overwrite=args.overwrite)  # before any model is loaded
    resources = Resources(core=args.core, core_type=args.core_type, adapter=args.adapter, seggpt=args.seggpt, device=args.device)
    options = backend_options(args.backend, resources)
    qc = pseudolabel_dataset(
        args.data,
        args.out,
        backend=args.backend,
        every=args.every,
        count=args.keyframes,
        axis=args.axis,
        band=args.uncertain,
        ignore=args.ignore_id,
        overwrite=args.overwrite,
        **options,
    )
    n = len(qc["cases"]) + len(qc["sparse_cases"])
    dice = {name: stats["dice"]["mean"] for name, stats in qc["summary"]["classes"].items()}
    shown = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in dice.items()) or "no fully labelled case"
    print(f"wrote {args.out}: {n} cases pseudo-labelled with {args.backend}; QC Dice on hidden slices: {shown}")
    return 0
