"""``adapt3d predict-npz``: the CVPR 2025 challenge's container I/O — every npz of --in → segs in --out."""

from __future__ import annotations

import argparse

NAME = "predict-npz"
HELP = "predict the CVPR 2025 challenge's npz inputs (boxes, clicks) into npz 'segs' files, as its container must"
DESCRIPTION = """\
Read every .npz in --in (keys imgs (z, y, x, already 0-255), spacing (x, y, z), optional boxes,
and from the challenge's step 2 on clicks, clicks_order, prev_pred) and write <same name>.npz with
'segs' (uint8 class ids 1..N in the order of boxes/clicks, same shape as imgs) into --out. The
model is loaded once for all files. No label key ('gts') is ever read.

Adapters are routed by the file's modality prefix (CT_, MR_, US_, ...): --adapter MR=DIR applies
DIR to MR_*.npz; files of other modalities run the frozen core.

Prompt strategy (see docs/cvpr25.md): SAM-Med3D has no box embeddings, so the box becomes a
foreground click at the centre of its mid-slice 2D box, the crop is centred on the 3D box and the
mask cut to the box's slice range; clicks follow in order. SegVol takes the box natively.
--baseline box-fill writes each class's box (no model; a reference point).

example:
  adapt3d predict-npz --core sam_med3d_turbo.pth --adapter MR=runs/mr_lora/adapter --in inputs --out outputs
"""


def _route(text: str) -> tuple[str, str]:
    modality, sep, directory = text.partition("=")
    if not sep or not modality or not directory:
        raise argparse.ArgumentTypeError(f"{text!r}: give MODALITY=DIR, e.g. MR=runs/mr_lora/adapter")
    return modality.upper(), directory


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--core", metavar="CKPT", help="core checkpoint (required unless --baseline)")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture: sam-med3d (default) or segvol")
    p.add_argument("--adapter", type=_route, action="append", default=[], metavar="MOD=DIR",
                   help="adapter for files of modality MOD (repeatable)")
    p.add_argument("--baseline", choices=["box-fill"], help="no model: write each class's box")
    p.add_argument("--in", dest="inputs", required=True, metavar="DIR", help="folder of challenge npz inputs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the <same name>.npz outputs")
    p.add_argument("--spacing", type=float, default=1.5, metavar="MM", help="the core's working spacing (default: 1.5; demo core: 3)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu); auto = cuda when available (predict.sh uses it)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt3d.atomic import atomic_file, writable_dir
    from adapt3d.data.cvpr_npz import load_challenge_case
    from adapt3d.errors import ConfigError, InputError

    src = Path(args.inputs)
    if not src.is_dir():
        raise InputError(f"{src}: input folder not found")
    files = sorted(src.glob("*.npz"))
    if not files:
        raise InputError(f"{src}: no .npz files")
    if args.core is None and args.baseline is None:
        raise ConfigError("give --core CKPT (or --baseline box-fill)")
    out = writable_dir(Path(args.out), "output folder")
    predictor = _predictor(args)
    import numpy as np

    for path in files:
        case = load_challenge_case(path, with_labels=False)
        inputs = {"imgs": case.imgs, "spacing": case.spacing, **case.extra}
        if case.boxes is not None:
            inputs["boxes"] = case.boxes
        try:
            segs = predictor(inputs, case.modality)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        with atomic_file(out / path.name) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, segs=segs)
        adapter = predictor.adapter_for(case.modality)
        print(f"{path.name}: {int(segs.max(initial=0))} class(es) written ({case.modality or 'no modality prefix'}, "
              f"{'adapter ' + adapter if adapter else 'frozen core' if args.core else args.baseline})")
    return 0


def _predictor(args: argparse.Namespace):
    from adapt3d.evaluate.cvpr25_predict import NpzPredictor

    spacing = (args.spacing,) * 3
    if args.baseline:
        return NpzPredictor(None, strategy=args.baseline)
    from adapt3d.infer.session import load_model

    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.core, core_type=args.core_type, device=args.device)
    routes = {}
    if args.adapter:
        from adapt3d.tuners import load_adapter

        for modality, directory in args.adapter:
            model = load_adapter(model, directory, name=modality)
            routes[modality] = modality
        model = model.to(args.device)
    model.eval()
    return NpzPredictor(model, routes=routes, target_spacing=spacing)
