"""``adapt3d predict``: segment one object from clicks and write the mask on the input grid."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

NAME = "predict"
HELP = "segment an object from point clicks and write a NIfTI mask on the input's grid"
DESCRIPTION = """\
Segment one object in a 3D image from point clicks, as the core's contract predicts a whole
volume: SAM-Med3D-format cores by windows (below), SegVol by zoom-out-zoom-in at the input's own
spacing (--text adds the class name as a text prompt).

The image is reoriented to RAS and resampled (--resample, default isotropic at the core's own
spacing, stored in its checkpoint: SAM-Med3D 1.5 mm, the demo core 3 mm; --spacing overrides
it) and normalised as the core expects. --mode whole (default) starts with the core's window
(SAM-Med3D: 128³) centred on the first point and adds overlapping windows wherever the object
reaches a window face, each prompted with the clicks inside it or a click propagated from what
is already segmented, until the object is covered or --max-windows ran; windows are blended
with Gaussian weights.
--mode crop segments only the single window centred on the first point (SAM-Med3D's official
inference; larger objects are cut at its faces). The mask is written back on the input's exact
grid, affine and header, so it overlays the image in 3D Slicer / ITK-SNAP. Only the points are
used to place windows: no label file is read.

Resampling policies (spacings per RAS axis):
  isotropic  every axis to --spacing (thick slices are interpolated)
  inplane    the two finest axes to --spacing, the slice axis kept (objects look squashed)
  native     no resampling (scale differs from the core's training data)

Points are voxel indices i,j,k of the input image (0-based, as stored in the file); a point
outside the image is refused before the core is loaded. A negative first value parses as is
(--point -1,53,5; --point=-1,53,5 works too). Clicks are applied one after another, each
seeing the previous mask, as in interactive use.

The ending of --out decides the mask format (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr); an existing --out is refused
unless --overwrite.

example:
  adapt3d predict --core sam_med3d_turbo.pth --image ct.nii.gz --point 120,98,60 \\
      --point 130,90,61 --negative 140,100,60 --out liver.nii.gz
  adapt3d predict --core sam_med3d_turbo.pth --image brain_mr.nii.gz --point 180,120,14 \\
      --resample inplane --out tumour.nii.gz
  adapt3d predict --auto --core demo_core.safetensors --adapter runs/cord/adapter --image t2.nii.gz --out cord.nii.gz
  adapt3d predict --auto --refine liver --negative 120,98,60 --core ... --adapter ... --image ct.nii.gz --out fixed.nii.gz

--auto (adapters trained with auto.enabled: true, docs/auto.md) needs no click: windows tile the
whole volume (SegVol: zoom-out-zoom-in per class), each class's learned prompt alone segments it,
and one label map (the training dataset's label values; 0 where no class reaches probability
0.5) is written on the input grid. --refine CLASS with --point/--negative corrects that class:
its automatic logits are the clicks' starting mask prompt in a window around each click, the
automatic result stands elsewhere (SAM-style cores).
"""


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r} must be three numbers i,j,k") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"point {text!r} must be three numbers i,j,k")
    return values  # type: ignore[return-value]


#: Arguments such as "-1,53,5" are values, not options. argparse only knows single negative
#: numbers as values (the pattern below extends its own; Python ≥ 3.13 already accepts these).
_NEGATIVE_VALUES = re.compile(r"^-\d+$|^-\d*\.\d+$|^-?\d*\.?\d+(,\s*-?\d*\.?\d+)+$")


def check_output(out: str, overwrite: bool) -> Path:
    """The mask path, if its ending is one predict writes and it may be written (else one-line errors)."""
    from adapt3d.atomic import refuse_existing
    from adapt3d.data.imageio import check_output_ending

    check_output_ending(out)  # the ending decides the format (NIfTI, MetaImage, NRRD)
    return refuse_existing(out, overwrite=overwrite)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from adapt3d.auto.cli import add_arguments as auto_arguments

    p._negative_number_matcher = _NEGATIVE_VALUES  # "--point -1,53,5" is a value (see above)
    p.add_argument("--core", required=True, metavar="CKPT", help="core checkpoint (.pth official format, state dict, or .safetensors)")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture (default: sam-med3d)")
    p.add_argument("--adapter", metavar="DIR", help="adapter directory to apply on the core (e.g. RUN/adapter)")
    p.add_argument("--image", required=True, metavar="IMAGE", help="input image (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr)")
    p.add_argument("--modality", default="auto", help="CT, MR or US (default: auto = CT if the image has values below -500)")
    p.add_argument("--point", type=_point, action="append", default=[], metavar="I,J,K", help="positive click (repeatable)")
    p.add_argument("--negative", type=_point, action="append", default=[], metavar="I,J,K", help="negative click (repeatable)")
    p.add_argument("--out", required=True, metavar="MASK", help="output mask (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr: the ending decides)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--mode", choices=["whole", "crop"], default="whole", help="whole object over several windows (default) or the single official crop")
    p.add_argument("--resample", default="isotropic", help="resampling policy: isotropic (default), inplane or native")
    p.add_argument("--spacing", type=float, metavar="MM", help="target spacing of the policy in mm (default: the core's own)")
    p.add_argument("--max-windows", type=int, default=27, metavar="N", help="window budget of --mode whole (default: 27)")
    p.add_argument("--overlap", type=float, default=0.25, help="overlap of neighbouring windows, fraction (default: 0.25)")
    p.add_argument("--text", metavar="NAME", help="class name as a text prompt, for cores that take text (SegVol), e.g. liver")
    auto_arguments(p)


def run(args: argparse.Namespace) -> int:
    from adapt3d.auto.cli import run_auto
    from adapt3d.data.imageio import load_volume, save_volume
    from adapt3d.errors import ConfigError
    from adapt3d.infer.predictor import check_inside
    from adapt3d.infer.session import guess_modality, load_model
    from adapt3d.infer.strategies import PredictRequest, check_request
    from adapt3d.infer.whole_volume import WholeVolumeConfig

    if args.auto:  # learned class prompts, no click (adapt3d.auto)
        return run_auto(args)
    if not args.point:
        raise ConfigError("give at least one --point (a positive click inside the object)")
    out = check_output(args.out, args.overwrite)
    options = {"resample": args.resample, "overlap": args.overlap, "max_windows": args.max_windows}
    WholeVolumeConfig(**options, **({} if args.spacing is None else {"spacing": args.spacing}))  # flags checked first
    image = load_volume(args.image)
    points = list(args.point) + list(args.negative)
    for point in points:
        check_inside(image, point)
    model = load_model(args.core, core_type=args.core_type, adapter=args.adapter, device=args.device)
    modality = guess_modality(image) if args.modality == "auto" else args.modality.upper()
    request = PredictRequest(image, modality, points, [1] * len(args.point) + [0] * len(args.negative), mode=args.mode,
                             spacing=args.spacing, text=args.text, **options)
    mask, how = check_request(model, request)(model, request)
    save_volume(mask, image.affine, out, reference=image, dtype="uint8")
    print(f"wrote {out}: {int(mask.sum())} voxels segmented ({modality}, {len(points)} clicks, {how}; "
          f"core preprocessing {model.preprocessing.describe()})")
    return 0
