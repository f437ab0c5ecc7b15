"""``adapt3d convert``: nnU-Net v2 raw ↔ the CVPR 2025 interactive challenge's npz files."""

from __future__ import annotations

import argparse

NAME = "convert"
HELP = "convert an nnU-Net raw dataset to the CVPR 2025 challenge's npz files, or back"
DESCRIPTION = """\
--to npz: every case of an nnU-Net v2 raw dataset becomes <MOD>_<dataset>_<case>.npz with
imgs (z, y, x) uint8 0-255 (CT: window --ct-window level,width; MR/US/...: the 0.5-99.5
percentiles of the non-zero voxels), spacing (x, y, z, SimpleITK order, as the challenge's
files), gts (classes renumbered 1..N) and boxes (the challenge's box prompt per class: z range,
mid slice, 2D box widened by 0-5 voxels per 256, seeded per file by --seed). --labels-apart
writes images to OUT/imgs and labels to OUT/gts, as the challenge's validation/test sets.

--to nnunet: npz files (IN/*.npz, or IN/imgs + IN/gts) become an nnU-Net v2 raw dataset; the
modality comes from the file-name prefix (CT_, MR_, US_, ...).

The npz has no direction and no origin: images are reoriented to LPS (SimpleITK's identity
direction) before writing, and OUT/adapt3d_geometry.json keeps each case's affine, label ids and
class names, so the way back restores the original grid and ids exactly. Challenge npz without
that file come back with the identity direction (LPS) at origin 0 and ids 1..N. Intensities are
not invertible: the way back writes the 0-255 values.

example:
  adapt3d convert --to npz datasets/sample/Dataset002_TotalSegExampleMR --out npz_mr --labels-apart
  adapt3d convert --to nnunet npz_mr --out Dataset102_MRBack
"""


def _window(text: str) -> tuple[float, float]:
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be level,width in HU, e.g. 40,400") from None
    if width <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the window width must be > 0")
    return level, width


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="IN", help="nnU-Net raw dataset (--to npz) or folder of npz files (--to nnunet)")
    p.add_argument("--to", required=True, choices=["npz", "nnunet"], help="target format")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--labels-apart", action="store_true", help="--to npz: labels in OUT/gts, images in OUT/imgs")
    p.add_argument("--ct-window", type=_window, default=(40.0, 400.0), metavar="L,W", help="--to npz: CT window in HU (default: 40,400)")
    p.add_argument("--seed", type=int, default=0, help="--to npz: seed of the box widening (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt3d.atomic import atomic_dir
    from adapt3d.data.cvpr_npz import nnunet_to_npz, npz_to_nnunet

    with atomic_dir(Path(args.out), overwrite=args.overwrite) as tmp:
        if args.to == "npz":
            files = nnunet_to_npz(args.source, tmp, labels_apart=args.labels_apart, seed=args.seed, ct_window=args.ct_window)
        else:
            files = npz_to_nnunet(args.source, tmp, name=Path(args.out).name)
    print(f"wrote {args.out}: {len(files)} case{'s' if len(files) != 1 else ''} ({args.to})")
    return 0
