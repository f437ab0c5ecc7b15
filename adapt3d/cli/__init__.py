"""``adapt3d <verb>``: parse arguments, call the library, map errors to exit codes.

Each verb lives in its own module of this package and exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; :data:`VERBS` lists them in help order.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

VERBS = [
    "demo", "ingest", "simulate-us", "convert", "config", "adapt", "evaluate", "pseudolabel", "predict", "predict-npz",
    "export", "report", "serve",
]


def _verb_module(name: str):
    return importlib.import_module(f"adapt3d.cli.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb."""
    from adapt3d import __version__

    parser = argparse.ArgumentParser(
        prog="adapt3d",
        description=(
            "Adapt frozen 3D segmentation foundation models (SAM-Med3D, SegVol) to new modalities "
            "with small adapters, and track how much CT performance they keep."
        ),
        epilog="Run 'adapt3d <verb> --help' for the options of each verb.",
    )
    parser.add_argument("--version", action="version", version=f"adapt3d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in VERBS:
        module = _verb_module(name)
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adapt3d`` console script."""
    from adapt3d.errors import Adapt3dError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args._run(args) or 0)
    except Adapt3dError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted (outputs are written atomically: nothing half-written was left)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
