"""``adapt3d export``: fold an adapter into the core's weights, in the core's official format."""

from __future__ import annotations

import argparse
import sys

NAME = "export"
HELP = "merge an adapter into the core and write weights the original model code loads"
DESCRIPTION = """\
Merge an adapter into its core and write the result as core weights.

LoRA, DoRA and full fine-tuning merge exactly: the output has the official key names and
loads strict in the original SAM-Med3D code (format 'official': {'model_state_dict': ...})
or as safetensors. Bottleneck adapters (adapter, adaptformer) add layers the original code
does not have: then core+adapter weights are written in adapt3d format instead, and a note
says so.

example:
  adapt3d export --core sam_med3d_turbo.pth --adapter runs/mr_lora/adapter --out merged.pth
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--core", required=True, metavar="CKPT", help="the core checkpoint the adapter was trained on")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture (default: sam-med3d)")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory (from adapt3d adapt or save_adapter)")
    p.add_argument("--out", required=True, metavar="FILE", help="output weights (.pth for official, .safetensors)")
    p.add_argument(
        "--format",
        default="official",
        help="official (the core's own checkpoint layout; 'sam-med3d' is an alias) or safetensors",
    )
    p.add_argument("--allow-other-core", action="store_true", help="accept a core whose weights differ from the adapter's")


def run(args: argparse.Namespace) -> int:
    from adapt3d import load_core
    from adapt3d.errors import ConfigError
    from adapt3d.tuners import export_merged, load_adapter

    fmt = "official" if args.format in ("official", args.core_type) else args.format
    if fmt not in ("official", "safetensors"):
        raise ConfigError(f"unknown --format {args.format!r}; valid: official ({args.core_type}), safetensors")
    core = load_core(args.core_type, args.core)
    model = load_adapter(core, args.adapter, allow_other_core=args.allow_other_core)
    result = export_merged(model, args.out, fmt=fmt)
    if result.merged:
        print(result.message)
    else:
        print(f"note: {result.message}", file=sys.stderr)
    return 0
