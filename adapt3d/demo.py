"""``adapt3d demo``: the whole product on the embedded sample data, offline, in a few minutes.

1. render a SIMULATED ultrasound dataset from the embedded MRI (adapt3d simulate-us);
2. LoRA-adapt the demo core (trained on the embedded CT) to the MRI and to the simulated
   ultrasound, each with a declared held-out-organ split, evaluating before/after at 1/3/5/10
   clicks and tracking CT Dice retention on CT organs the core never trained on; the ultrasound
   adaptation starts with a self-supervised context stage on REAL ultrasound (the unlabelled
   spine-phantom sweep, Dataset005_SpinePhantomUS), its labelled volumes stay simulated;
3. write the cross-domain report, the adapters, and a merged export of the MRI adapter.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from adapt3d.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "sample"
CONFIGS = REPO / "configs" / "experiment"
DEMO_CORE = SAMPLE / "demo_core" / "demo_core.safetensors"
PHANTOM = SAMPLE / "Dataset005_SpinePhantomUS"  # real 3D ultrasound, unlabelled: the US context head's pool
MARKER = ".adapt3d-demo"


def _step(n: int, total: int, text: str, t0: float) -> None:
    print(f"[{n}/{total}] {text}  (t = {time.time() - t0:.0f} s)", flush=True)


def _check_sample() -> None:
    missing = [p for p in (SAMPLE / "Dataset001_TotalSegExampleCT", SAMPLE / "Dataset002_TotalSegExampleMR", PHANTOM, CONFIGS) if not p.exists()]
    if missing:
        raise InputError(f"{missing[0]}: demo data not found (run the demo from a source checkout of adapt3d)")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not overwrite:
        raise ConfigError(f"{out}: exists and is not a demo output (choose another --out, or --overwrite)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by adapt3d demo; safe to delete\n")


def core_overrides(core: str | None) -> list[str]:
    """Config overrides for a user-supplied SAM-Med3D checkpoint (its own preprocessing: 1.5 mm, 128³ crops)."""
    if core is None:
        if not DEMO_CORE.exists():
            raise InputError(f"{DEMO_CORE}: demo core not found (rebuild it with 'adapt3d demo --build-core')")
        return []
    path = Path(core).resolve()
    return [
        f"core.checkpoint={path}",
        f"core.description=user-supplied SAM-Med3D checkpoint {path.name} (its training data: see its own documentation)",
    ]


def run_demo(out: Path, *, core: str | None = None, overwrite: bool = False, epochs: int | None = None) -> dict:
    """Run the demo into ``out``; returns the paths of what it wrote."""
    from adapt3d.data.simulate_us import UltrasoundParams
    from adapt3d.data.simulate_us_files import simulate_us_dataset
    from adapt3d.report import write_report
    from adapt3d.summary import summary_lines
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation

    t0 = time.time()
    _check_sample()
    overrides = core_overrides(core)
    out = Path(out).resolve()
    _prepare_out(out, overwrite)
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    total = 5
    _step(1, total, "rendering SIMULATED ultrasound from the embedded MRI (adapt3d simulate-us)", t0)
    us_data = out / "data" / "Dataset902_SimulatedUS"
    simulate_us_dataset(SAMPLE / "Dataset002_TotalSegExampleMR", us_data, seed=0, params=UltrasoundParams(angles_deg=(90.0, 90.0)))
    runs = {}
    us = [f"data.target.path={us_data}", f"context_head.pool={PHANTOM}"]
    texts = {"mri": "MRI", "us": "SIMULATED ultrasound, after a context stage on the REAL US phantom (unlabelled)"}
    for i, (key, config, extra) in enumerate((("mri", "demo_mr_lora.yaml", []), ("us", "demo_us_lora.yaml", us)), start=2):
        _step(i, total, f"LoRA adaptation to {texts[key]} (before/after, CT retention)", t0)
        cfg = load_experiment(CONFIGS / config, [f"output_dir={out / 'runs'}", *overrides, *extra])
        runs[key] = run_adaptation(cfg, overwrite=True)
    _step(4, total, "writing the cross-domain report", t0)
    report = write_report([runs["mri"], runs["us"]], out / "report", overwrite=True)
    _step(5, total, "exporting the MRI adapter merged into the core (official SAM-Med3D format)", t0)
    merged = _export(runs["mri"], core, out / "exports" / "mri_lora_merged.pth")
    print()
    for key, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        print("\n".join(summary_lines(metrics)))
        print()
    print("real data: the CT and MRI volumes (silver-standard labels), the ultrasound phantom (unlabelled,")
    print("  used only by the context stage); SIMULATED: every labelled ultrasound volume (rendered from the MRI).")
    html = Path(report["paths"]["html"])
    print(f"report:  {html}")
    print(f"adapters: {runs['mri'] / 'adapter'}, {runs['us'] / 'adapter'}")
    print(f"merged:  {merged}")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return {"runs": runs, "report": html, "merged": merged}


def _export(run: Path, core: str | None, out: Path) -> Path:
    from adapt3d.cores import load_core
    from adapt3d.tuners import export_merged, load_adapter

    model = load_adapter(load_core("sam-med3d", core or DEMO_CORE), run / "adapter")
    return export_merged(model, out).path


def build_demo_core(*, out: Path = DEMO_CORE, overrides: list[str] = ()) -> Path:
    """Train the demo core from scratch on the embedded CT (configs/experiment/demo_core_ct.yaml)."""
    import lightning as L

    from adapt3d.cores import load_core
    from adapt3d.cores.preprocessing import Preprocessing
    from adapt3d.train.config import load_experiment
    from adapt3d.train.run import run_adaptation
    from adapt3d.tuners import export_merged, load_adapter

    _check_sample()
    work = out.parent / "build"
    cfg = load_experiment(CONFIGS / "demo_core_ct.yaml", [f"output_dir={work}", *overrides])
    run = run_adaptation(cfg, overwrite=True)
    L.seed_everything(cfg.seed, verbose=False)  # the same random initialisation the run started from
    init = load_core(cfg.core.name, None, **cfg.core.arch)
    init.preprocessing = Preprocessing(init.image_size, tuple(cfg.data.target_spacing), cfg.data.normalization or init.preprocessing.normalization)  # as trained
    path = export_merged(load_adapter(init, run / "adapter"), out, fmt="safetensors").path
    shutil.copy(run / "metrics.json", out.parent / "demo_core_metrics.json")
    (out.parent / "DEMO_CORE.md").write_text(_core_card(json.loads((run / "metrics.json").read_text())))
    shutil.rmtree(work, ignore_errors=True)
    return path


def _core_card(metrics: dict) -> str:
    """What the demo core is, how it was made, and how well it segments CT organs it never saw."""
    from adapt3d.summary import summary_lines

    dom = next(iter(metrics["domains"].values()))
    return "\n".join([
        "# The adapt3d demo core",
        "",
        "A small SAM-Med3D-architecture model (SAM-Med3D module and key names; 64³ crops at 3 mm,",
        "8³ token grid, embed 96, depth 4): **not** SAM-Med3D's pretrained weights.",
        "",
        "- trained from scratch (random initialisation, seed 0) by `adapt3d demo --build-core`",
        "  (`configs/experiment/demo_core_ct.yaml`: full training, iterative click training,",
        f"  {metrics['training']['steps']} steps, {metrics['training']['wall_seconds']:.0f} s on the machine that built it);",
        f"- data: ONE CT volume, {dom['dataset']} (TotalSegmentator example CT, silver-standard labels),",
        f"  {len(dom['split']['train'])} organs for training; {len(dom['split']['test'])} organs held out",
        f"  ({', '.join(i.split('/')[1] for i in dom['split']['test'])}) — the demo's CT retention set.",
        "- preprocessing, stored in the checkpoint's metadata and used by `adapt3d evaluate` / `predict` /",
        "  `pseudolabel` unless a flag overrides it: 64³ crops at 3 mm, `sam-med3d` normalisation.",
        "",
        "N-click Dice (×100) on the held-out CT organs, random initialisation (before) and trained (after):",
        "",
        "```",
        *summary_lines(metrics),
        "```",
        "",
    ])
