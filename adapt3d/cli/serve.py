"""``adapt3d serve``: serve a core (and adapters) to 3D Slicer / napari over the nnInteractive protocol."""

from __future__ import annotations

import argparse
import ipaddress
import os

NAME = "serve"
HELP = "serve a core and its adapters to 3D Slicer / napari (nnInteractive remote protocol)"
DESCRIPTION = """\
Serve a SAM-Med3D-format core, with optional adapters, over the nnInteractive remote-inference
protocol, so the SlicerNNInteractive extension of 3D Slicer and napari-nninteractive can use it
(set the plugin's server URL to http://HOST:PORT). Needs the serve extra:
pip install 'adapt3d[serve]'.

Every click reruns the whole-volume predictor on all clicks of the session (objects larger than
one window work; previous masks are fed back); image embeddings are cached per session and
window, so a click in an encoded region runs only the prompt encoder and mask decoder. Points,
scribbles and lassos (each turned into one click) are supported; boxes and initial
segmentations are refused (the core has no box embeddings). Adapters with class prompts
(auto.enabled: true) also offer an automatic mask per class as a session's starting result
(POST /adapt3d/auto_segment, an adapt3d extension); clicks then refine it. See docs/serve.md.

--adapter [MODALITY=]DIR routes images of that modality (image_properties "modality", else
--modality, else guessed: CT below -500 HU, otherwise MR) through the adapter; an adapter without
MODALITY= serves every modality not routed; the rest uses the frozen core.

The server binds 127.0.0.1 (this machine only). Binding another address needs --api-key (the
clients send it as a bearer token; or set NN_INTERACTIVE_API_KEY) or an explicit --insecure.

example:
  adapt3d serve --core datasets/sample/demo_core/demo_core.safetensors \\
      --adapter MR=adapters/demo-mri-lora --adapter US=adapters/demo-us-simulated-lora
  adapt3d serve --core sam_med3d_turbo.pth --host 0.0.0.0 --api-key "$(openssl rand -hex 32)"
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--core", required=True, metavar="CKPT", help="core checkpoint (.pth official format, state dict, or .safetensors)")
    p.add_argument("--core-type", default="sam-med3d", help="core architecture (default: sam-med3d)")
    p.add_argument("--adapter", action="append", default=[], metavar="[MODALITY=]DIR", help="adapter directory, optionally routed by modality (repeatable)")
    p.add_argument("--class-prompts", metavar="FILE",
                   help="class prompts for the core without adapter (a merged export's <stem>.class_prompts.safetensors): "
                        "automatic segmentation; adapters trained with auto.enabled: true bring their own")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=1527, help="TCP port (default: 1527)")
    p.add_argument("--api-key", default=None, help="bearer key every request must carry (default: $NN_INTERACTIVE_API_KEY)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda:0 ...")
    p.add_argument("--modality", default="auto", help="modality of every image unless the client says: auto (CT/MR by intensity), CT, MR, US")
    p.add_argument("--array-orientation", default="SAR", metavar="CODES", help="axis codes of the arrays viewers send (default: SAR, SlicerNNInteractive's (k, j, i) order); see docs/serve.md")
    p.add_argument("--resample", default="isotropic", help="resampling policy: isotropic (default), inplane or native")
    p.add_argument("--spacing", type=float, metavar="MM", help="working spacing in mm (default: the core's own, e.g. 1.5 for SAM-Med3D, 3 for the demo core)")
    p.add_argument("--max-windows", type=int, default=27, metavar="N", help="window budget per prediction (default: 27)")
    p.add_argument("--overlap", type=float, default=0.25, help="overlap of neighbouring windows, fraction (default: 0.25)")
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent client sessions (default: 4)")
    p.add_argument("--idle-timeout", type=float, default=600.0, metavar="S", help="reap a session after S seconds without an action (default: 600)")
    p.add_argument("--liveness-timeout", type=float, default=60.0, metavar="S", help="reap a session after S seconds without any request (default: 60)")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, metavar="MB", help="largest request body (default: 1024)")
    p.add_argument("--license", default=None, help="licence of the served weights, shown by the viewers (default: read from a card next to the checkpoint)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")


def _needs_key(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: may resolve to any interface


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    from adapt3d.errors import ConfigError

    missing = []
    for module in ("fastapi", "uvicorn", "nnInteractive.inference.remote.serialization"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.split(".")[0])
    if missing:
        raise ConfigError(f"adapt3d serve needs the serve extra (missing {', '.join(missing)}): pip install 'adapt3d[serve]'")
    api_key = args.api_key or os.environ.get("NN_INTERACTIVE_API_KEY") or None
    if _needs_key(args.host) and not api_key and not args.insecure:
        raise ConfigError(f"--host {args.host} is reachable from other machines: give --api-key KEY (or --insecure)")
    for name in ("port", "max_sessions"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not args.idle_timeout > 0 or not args.liveness_timeout > 0 or not args.max_upload_mb > 0:
        raise ConfigError("--idle-timeout, --liveness-timeout and --max-upload-mb must be positive")

    import uvicorn

    from adapt3d.infer.whole_volume import WholeVolumeConfig
    from adapt3d.serve import AdapterSpec, ServedModel, ServeSettings, make_app
    from adapt3d.serve.geometry import check_orientation

    check_orientation(args.array_orientation)
    WholeVolumeConfig(resample=args.resample, overlap=args.overlap, max_windows=args.max_windows)  # flags checked before loading
    adapters = [AdapterSpec.parse(a) for a in args.adapter]
    served = ServedModel.load(
        args.core, adapters, core_type=args.core_type, device=_device(args.device), spacing=args.spacing,
        whole_volume={"resample": args.resample, "overlap": args.overlap, "max_windows": args.max_windows},
        modality=args.modality, licence=args.license, class_prompts=args.class_prompts,
    )
    settings = ServeSettings(
        api_key=api_key, max_sessions=args.max_sessions, idle_timeout=args.idle_timeout,
        liveness_timeout=args.liveness_timeout, max_upload_bytes=int(args.max_upload_mb * 2**20),
        array_orientation=args.array_orientation,
    )
    routes = ", ".join(f"{m}→{a}" for m, a in served.routes.items()) or "none"
    automatic = "; ".join(f"{a or 'core'}: {', '.join(p.class_names)}" for a, p in served.class_prompts.items()) or "none"
    print(f"serving {served.info['name']} on http://{args.host}:{args.port} (adapter routes: {routes}; "
          f"default: {served.default_adapter or 'frozen core'}; automatic classes: {automatic}; key: {'required' if api_key else 'none'})")
    uvicorn.run(make_app(served, settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
