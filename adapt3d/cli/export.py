"""``adapt3d export``: fold an adapter into the core's weights, in the core's official format."""

from __future__ import annotations

import argparse
import sys

NAME = "export"
HELP = "merge an adapter into the core and write weights the original model code loads"
DESCRIPTION = """\
Merge an adapter into its core and write the result as core weights.

The ending of --out decides the format: .pth, .pt or .bin writes the core's official torch format
(SAM-Med3D: {'model_state_dict': ...}, loads strict in the original code), .safetensors writes
safetensors; any other ending is refused, and so is a --format that disagrees with the ending.
An existing --out is refused unless --overwrite.

LoRA, DoRA and full fine-tuning merge exactly. Bottleneck adapters (adapter, adaptformer) add
layers the original code does not have: then core+adapter weights are written in adapt3d
format instead (<name>.adapt3d.safetensors beside --out), and a note says so.
An adapter's learned class prompts (auto.enabled) are written beside as <name>.class_prompts.safetensors.

example:
  adapt3d export --core sam_med3d_turbo.pth --adapter runs/mr_lora/adapter --out merged.pth
  adapt3d export --core sam_med3d_turbo.pth --adapter runs/mr_lora/adapter --out merged.safetensors
"""


#: --format values (``sam-med3d`` is an alias of the official format).
FORMATS = {"official": "official", "sam-med3d": "official", "safetensors": "safetensors"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--core", required=True, metavar="CKPT", help="the core checkpoint the adapter was trained on")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture (default: sam-med3d)")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory (from adapt3d adapt or save_adapter)")
    p.add_argument("--out", required=True, metavar="FILE", help="output weights: .pth/.pt/.bin (official torch format) or .safetensors")
    p.add_argument("--format", help="optional check: official (alias sam-med3d) or safetensors; must agree with the ending of --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--allow-other-core", action="store_true", help="accept a core whose weights differ from the adapter's")


def run(args: argparse.Namespace) -> int:
    from adapt3d.atomic import refuse_existing
    from adapt3d.auto.prompts import plan_prompts_export
    from adapt3d.errors import ConfigError
    from adapt3d.infer.session import load_model
    from adapt3d.tuners import export_merged
    from adapt3d.tuners.export import export_path, format_for

    if args.format is not None and args.format not in FORMATS:
        raise ConfigError(f"unknown --format {args.format!r}; valid: {', '.join(FORMATS)} (or leave it to the ending of --out)")
    fmt = format_for(args.out, FORMATS.get(args.format))
    model = load_model(args.core, core_type=args.core_type, adapter=args.adapter, allow_other_core=args.allow_other_core)
    refuse_existing(export_path(model, args.out), overwrite=args.overwrite)
    # the adapter's class prompts (adapt3d.auto) travel with the weights; checked before writing
    write_prompts = plan_prompts_export(args.adapter, export_path(model, args.out), overwrite=args.overwrite)
    result = export_merged(model, args.out, fmt=fmt)
    if write_prompts is not None:
        print(write_prompts())
    if result.merged:
        print(result.message)
    else:
        print(f"note: {result.message}", file=sys.stderr)
    return 0
