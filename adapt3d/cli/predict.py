"""``adapt3d predict``: segment one object from clicks and write the mask on the input grid."""

from __future__ import annotations

import argparse

NAME = "predict"
HELP = "segment an object from point clicks and write a NIfTI mask on the input's grid"
DESCRIPTION = """\
Segment one object in a 3D image from point clicks with a SAM-Med3D-format core.

The image is reoriented to RAS, resampled to 1.5 mm, and a 128³ crop centred on the first
point is segmented (SAM-Med3D's official preprocessing); the mask is written back on the
input's exact grid, affine and header, so it overlays the image in 3D Slicer / ITK-SNAP.

Points are voxel indices i,j,k of the input image (0-based, as stored in the file). Clicks
are applied one after another, each seeing the previous mask, as in interactive use.

example:
  adapt3d predict --core sam_med3d_turbo.pth --image ct.nii.gz --point 120,98,60 \\
      --point 130,90,61 --negative 140,100,60 --out liver.nii.gz
"""


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r} must be three numbers i,j,k") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"point {text!r} must be three numbers i,j,k")
    return values  # type: ignore[return-value]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--core", required=True, metavar="CKPT", help="core checkpoint (.pth official format, state dict, or .safetensors)")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture (default: sam-med3d)")
    p.add_argument("--image", required=True, metavar="NIFTI", help="input image (.nii.gz)")
    p.add_argument("--modality", default="auto", help="CT, MR or US (default: auto = CT if the image has values below -500)")
    p.add_argument("--point", type=_point, action="append", default=[], metavar="I,J,K", help="positive click (repeatable)")
    p.add_argument("--negative", type=_point, action="append", default=[], metavar="I,J,K", help="negative click (repeatable)")
    p.add_argument("--out", required=True, metavar="NIFTI", help="output mask (.nii.gz)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from adapt3d.data.nifti import load_volume, save_volume
    from adapt3d.errors import ConfigError
    from adapt3d.infer.predictor import CropPredictor
    from adapt3d.infer.session import guess_modality, load_model

    if not args.point:
        raise ConfigError("give at least one --point (a positive click inside the object)")
    if not (args.out.endswith(".nii.gz") or args.out.endswith(".nii")):
        raise ConfigError(f"{args.out}: output must end in .nii.gz or .nii")
    model = load_model(args.core, core_type=args.core_type, device=args.device)
    image = load_volume(args.image)
    modality = guess_modality(image) if args.modality == "auto" else args.modality.upper()
    points = list(args.point) + list(args.negative)
    labels = [1] * len(args.point) + [0] * len(args.negative)
    mask = CropPredictor(model).predict(image, modality, points, labels)
    save_volume(mask, image.affine, args.out, reference=image, dtype="uint8")
    print(f"wrote {args.out}: {int(mask.sum())} voxels segmented ({modality}, {len(points)} clicks)")
    return 0
