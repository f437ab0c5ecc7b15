"""``adapt3d predict --auto``: every trained class (or ``--classes``) from the class prompts, no click;
``--refine CLASS`` with clicks corrects one class's automatic mask."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of automatic prediction (added to ``adapt3d predict``)."""
    p.add_argument("--auto", action="store_true",
                   help="automatic: segment the adapter's trained classes with their learned class prompts, no click (docs/auto.md)")
    p.add_argument("--classes", metavar="A,B", help="--auto: only these classes (default: every class with a prompt)")
    p.add_argument("--class-prompts", metavar="FILE",
                   help="--auto: class prompts file (default: ADAPTER/class_prompts.safetensors; "
                        "after `adapt3d export`: <stem>.class_prompts.safetensors)")
    p.add_argument("--probabilities", metavar="DIR", help="--auto: also write one probability map per class into DIR")
    p.add_argument("--refine", metavar="CLASS",
                   help="--auto: refine this class's automatic mask with the --point/--negative clicks "
                        "(its automatic logits are the clicks' starting mask prompt); the other classes stay automatic")


def run_auto(args: argparse.Namespace) -> int:
    """Check everything cheap first (flags, outputs, prompts, classes, image), then load and predict."""
    from adapt3d.atomic import atomic_dir, refuse_existing
    from adapt3d.auto.predict import predict_auto
    from adapt3d.auto.prompts import check_prompts_fit, load_class_prompts
    from adapt3d.auto.refine import check_refinable, predict_refined
    from adapt3d.cli.predict import check_output
    from adapt3d.data.imageio import ending_of, load_volume, save_volume
    from adapt3d.errors import ConfigError
    from adapt3d.infer.predictor import check_points
    from adapt3d.infer.session import guess_modality, load_model
    from adapt3d.infer.whole_volume import WholeVolumeConfig, WholeVolumePredictor

    clicks = list(args.point) + list(args.negative)
    if clicks and args.refine is None:
        raise ConfigError("--auto with --point/--negative needs --refine CLASS (the class whose automatic mask the clicks correct)")
    if args.refine is not None and not clicks:
        raise ConfigError(f"--refine {args.refine}: give the correcting clicks with --point (add) and --negative (remove)")
    if args.mode != "whole":
        raise ConfigError("--auto slides over the whole volume: --mode crop does not apply")
    source = args.class_prompts or args.adapter
    if source is None:
        raise ConfigError("--auto needs --adapter (trained with auto.enabled: true) or --class-prompts FILE")
    out = check_output(args.out, args.overwrite)
    probs_dir = None if args.probabilities is None else refuse_existing(args.probabilities, overwrite=args.overwrite)
    prompts = load_class_prompts(source)
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    if classes is not None and not classes:
        raise ConfigError("--classes: give class names separated by commas")
    prompts.indices(classes)  # an unknown class is refused here
    if args.refine is not None:
        check_refinable(args.core_type)
        prompts.indices([args.refine])
        if classes is not None and args.refine not in classes:
            raise ConfigError(f"--refine {args.refine}: not among --classes {','.join(classes)}")
    options = {"resample": args.resample, "overlap": args.overlap}
    config = WholeVolumeConfig(**options, **({} if args.spacing is None else {"spacing": args.spacing}))
    image = load_volume(args.image)
    labels = [1] * len(args.point) + [0] * len(args.negative)
    if clicks:
        check_points(image, clicks, labels)
    model = load_model(args.core, core_type=args.core_type, adapter=args.adapter, device=args.device)
    check_prompts_fit(prompts, model, str(source))
    prep = model.preprocessing
    if args.spacing is None and prep.spacing is not None:  # a native-spacing core (SegVol) keeps the input's spacing
        config = dataclasses.replace(config, spacing=prep.isotropic_spacing(f"{args.core} (core)"))
    config = dataclasses.replace(config, normalization=prep.normalization)
    modality = guess_modality(image) if args.modality == "auto" else args.modality.upper()
    if clicks:
        prepared = WholeVolumePredictor(model, config).prepare(image, modality)
        result = predict_refined(model, prompts, prepared, config, args.refine, clicks, labels, classes,
                                 probabilities=probs_dir is not None)
    else:
        result = predict_auto(model, prompts, image, modality, config, classes, probabilities=probs_dir is not None)
    if probs_dir is not None:
        ending = ending_of(out) or ".nii.gz"
        with atomic_dir(probs_dir, overwrite=args.overwrite) as tmp:
            for name, prob in result.probabilities.items():
                save_volume(prob, image.affine, Path(tmp) / f"{name}{ending}", reference=image, dtype="float32")
    save_volume(result.labels, image.affine, out, reference=image, dtype=result.labels.dtype)
    counts = ", ".join(f"{n}={v}: {k} voxels" for (n, k), v in zip(result.summary()["classes"].items(), result.label_values))
    how = f"automatic, {args.refine} refined by {len(clicks)} clicks" if clicks else "automatic segmentation"
    print(f"wrote {out}: {how} ({modality}, {result.windows} windows, {result.seconds:.1f} s; {counts}; "
          f"core preprocessing {prep.describe()})" + (f"; probabilities in {probs_dir}" if probs_dir else ""))
    return 0
