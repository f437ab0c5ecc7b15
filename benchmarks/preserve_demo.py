"""Target Dice gain and MERGED CT retention with and without ``retention.preserve`` on the demo data.

Runs the demo's two experiments (configs/experiment/demo_mr_lora.yaml, demo_us_lora.yaml: the
demo core, MRI and SIMULATED ultrasound, same seeds) once per variant, times every training
step, and writes a Markdown table (benchmarks/results/preserve.md by default) and the raw figures
next to it (preserve.json: one record per run; preserve.csv: one row per run and click count).

    python -m benchmarks.preserve_demo --out /tmp/preserve_bench            # off vs on (recommended)
    python -m benchmarks.preserve_demo --out /tmp/preserve_bench --variant w10=retention.preserve=true,retention.preserve_weight=10

Existing run directories under --out are reused (delete them to rerun).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import yaml

from adapt3d.demo import CONFIGS, SAMPLE
from adapt3d.train.config import load_experiment
from adapt3d.train.run import run_adaptation

REPO = Path(__file__).resolve().parents[1]
DOMAINS = {"mri": "demo_mr_lora.yaml", "us": "demo_us_lora.yaml"}
CLICKS = ("1", "3", "5", "10")


CAVEATS = [
    "Read with care: the demo core is weak (≈24 Dice on the CT organs it never saw), trained on ONE CT volume;",
    "the CT retention set is 8 held-out organs of that same volume (silver-standard labels), so a retention",
    "ratio moves by several percent when one organ changes, and values above 1 occur. The preservation crops",
    "are random body crops of that same CT volume (its labels are never read) — the only CT in the sample; on a",
    "lab's data point `retention.preserve_path` at a separate (unlabelled) CT archive. US is SIMULATED from the MRI.",
    "`s / step` is the median wall time of a training step (forward, backward, optimizer) on a shared 2-core CPU",
    "whose load changes between runs (preserve.json: median_load_1min): across runs the difference is mostly the",
    "load, not preservation; preserve_forward_seconds_per_step / median_step_seconds is measured within one run.",
    "CT organ loss: mean over the CT organs of the Dice each one lost (×100), adapted model (= merged for LoRA).",
]


class StepTimer(L.Callback):
    """Wall time of every training step (forward, backward, optimizer), and the machine's 1-minute load then."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.loads: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t)
        self.loads.append(os.getloadavg()[0])


def us_data(out: Path) -> Path:
    """The demo's simulated ultrasound (adapt3d simulate-us on the embedded MRI, as `adapt3d demo` renders it)."""
    from adapt3d.data.simulate_us import UltrasoundParams
    from adapt3d.data.simulate_us_files import simulate_us_dataset

    path = out / "data" / "Dataset902_SimulatedUS"
    if not (path / "dataset.json").exists():
        simulate_us_dataset(SAMPLE / "Dataset002_TotalSegExampleMR", path, seed=0, params=UltrasoundParams(angles_deg=(90.0, 90.0)))
    return path


def run(out: Path, domain: str, variant: str, overrides: list[str]) -> dict:
    run_dir = out / "runs" / f"{domain}_{variant}"
    if not (run_dir / "metrics.json").exists():
        extra = [f"data.target.path={us_data(out)}"] if domain == "us" else []
        cfg = load_experiment(CONFIGS / DOMAINS[domain], [f"output_dir={out / 'runs'}", f"name={domain}_{variant}", *extra, *overrides])
        timer = StepTimer()
        run_adaptation(cfg, overwrite=True, callbacks=(timer,))
        (run_dir / "load.json").write_text(json.dumps(timer.loads))
        (run_dir / "step_times.json").write_text(json.dumps(timer.times))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["step_times"] = json.loads((run_dir / "step_times.json").read_text())
    load = run_dir / "load.json"  # absent for runs made before the script recorded it
    metrics["load"] = json.loads(load.read_text()) if load.exists() else None
    metrics["seed"] = yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
    return metrics


def dice(metrics: dict, domain: str, stage: str, k: str) -> float:
    return metrics["domains"][domain][stage]["summary"][k]["dice"]["mean"]


def organ_changes(metrics: dict, k: str) -> dict[str, float]:
    """CT Dice after − before per held-out CT organ (the adapted model; for LoRA its merged weights
    give the same Dice: the run's test checks the means agree to 1e-3)."""
    before, after = (metrics["domains"]["ct"][s]["per_class"] for s in ("before", "after"))
    return {c: after[c][k]["dice"]["mean"] - before[c][k]["dice"]["mean"] for c in before}


def forgetting(metrics: dict, k: str) -> float:
    """Mean over the CT organs of the Dice each one LOST (gains elsewhere do not offset it)."""
    changes = organ_changes(metrics, k).values()
    return float(np.mean([max(0.0, -c) for c in changes]))


def table(results: dict[tuple[str, str], dict], variants: list[str]) -> list[str]:
    lines = [
        ("| domain | variant | target Dice before → after (gain), 1 / 3 / 5 / 10 clicks | gain kept vs off | "
         "MERGED CT retention 1 / 3 / 5 / 10 | CT organ loss 1 / 3 / 5 / 10 (worst organ) | guard | s / step (extra) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for domain in DOMAINS:
        base = results.get((domain, "off"))
        for variant in variants:
            m = results.get((domain, variant))
            if m is None:
                continue
            target = next(n for n, d in m["domains"].items() if d["role"] == "target")
            cells = []
            kept = []
            for k in CLICKS:
                b, a = dice(m, target, "before", k), dice(m, target, "after", k)
                cells.append(f"{100 * b:.1f} → {100 * a:.1f} ({100 * (a - b):+.1f})")
                if base is not None:
                    gain_off = dice(base, target, "after", k) - dice(base, target, "before", k)
                    kept.append(f"{(a - b) / gain_off:.0%}" if gain_off > 0 else "—")
            merged = m["retention"]["merged"]["per_click"]
            ret = " / ".join(f"{merged[k]:.3f}" for k in CLICKS)
            lost = " / ".join(f"{100 * forgetting(m, k):.1f}" for k in CLICKS)
            worst = min(organ_changes(m, "1").items(), key=lambda kv: kv[1])
            lost += f" ({worst[0]} {100 * worst[1]:+.0f} @1)"
            guard = "triggered" if m["retention"]["guard"]["triggered"] else "ok"
            step = float(np.median(m["step_times"][1:]))
            extra = ""
            if base is not None and variant != "off":
                extra = f" ({step - float(np.median(base['step_times'][1:])):+.2f})"
            lines.append(f"| {domain}{' (simulated)' if domain == 'us' else ''} | {variant} | {'; '.join(cells)} | "
                         f"{' / '.join(kept) if kept else '—'} | {ret} | {lost} | {guard} | {step:.2f}{extra} |")
    return lines


def raw(results: dict[tuple[str, str], dict], variants: dict[str, list[str]], common: list[str]) -> list[dict]:
    """One record per run: settings, target and merged-CT Dice per click count, retention, timings."""
    records = []
    for (domain, variant), m in results.items():
        target = next(n for n, d in m["domains"].items() if d["role"] == "target")
        merged = m["retention"]["merged"]
        preserve = m["training"].get("preserve") or {}
        records.append({
            "domain": domain, "simulated": m["domains"][target]["simulated"], "variant": variant,
            "overrides": [*common, *variants[variant]], "seed": m["seed"], "steps": m["training"]["steps"],
            "target_before": {k: dice(m, target, "before", k) for k in CLICKS},
            "target_after": {k: dice(m, target, "after", k) for k in CLICKS},
            "ct_frozen": {k: dice(m, "ct", "before", k) for k in CLICKS},
            "ct_merged": {k: merged["dice"][k] for k in CLICKS},
            "merged_retention": {k: merged["per_click"][k] for k in CLICKS},
            "ct_organ_change": {k: organ_changes(m, k) for k in CLICKS},
            "ct_organ_loss": {k: forgetting(m, k) for k in CLICKS},
            "adapter_retention": m["retention"]["final"], "guard_triggered": m["retention"]["guard"]["triggered"],
            "median_step_seconds": float(np.median(m["step_times"][1:])),
            "preserve_forward_seconds_per_step": preserve.get("forward_seconds_per_step"),
            "preserve_setup_seconds": preserve.get("setup_seconds"), "preserve_cache_bytes": preserve.get("cache_bytes"),
            "train_wall_seconds": m["training"].get("wall_seconds"),
            "median_load_1min": float(np.median(m["load"])) if m["load"] else None,
        })
    return records


def write_raw(records: list[dict], results: Path) -> None:
    """``preserve.json`` (the records) and ``preserve.csv`` (one row per run and click count) next to ``results``."""
    results.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    columns = ["domain", "variant", "clicks", "target_before", "target_after", "target_gain", "ct_frozen", "ct_merged",
               "merged_retention", "ct_organ_loss", "median_step_seconds"]
    with results.with_suffix(".csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for r in records:
            for k in CLICKS:
                out.writerow([r["domain"], r["variant"], k, f"{r['target_before'][k]:.4f}", f"{r['target_after'][k]:.4f}",
                              f"{r['target_after'][k] - r['target_before'][k]:+.4f}", f"{r['ct_frozen'][k]:.4f}",
                              f"{r['ct_merged'][k]:.4f}", f"{r['merged_retention'][k]:.4f}", f"{r['ct_organ_loss'][k]:.4f}",
                              f"{r['median_step_seconds']:.3f}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder for the runs (and the simulated US)")
    parser.add_argument("--domains", default="mri,us")
    parser.add_argument("--variant", action="append", default=[], help="NAME=override,override,... (besides off and on)")
    parser.add_argument("--common", default="", help="comma-separated overrides for every variant (e.g. a shorter schedule)")
    parser.add_argument("--run", default="", help="comma-separated variants to run now (default: all); others are only read if present")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "preserve.md")
    args = parser.parse_args()
    variants = {"off": [], "on": ["retention.preserve=true"]}
    for v in args.variant:
        name, _, overrides = v.partition("=")
        variants[name] = overrides.split(",")
    common = [o for o in args.common.split(",") if o]
    results = {}
    now = args.run.split(",") if args.run else list(variants)
    for domain in args.domains.split(","):
        for variant, overrides in variants.items():
            t0 = time.time()
            if variant in now or (args.out / "runs" / f"{domain}_{variant}" / "step_times.json").exists():
                results[(domain, variant)] = run(args.out, domain, variant, [*common, *overrides])
                print(f"{domain} {variant}: {time.time() - t0:.0f} s", flush=True)
    lines = table(results, list(variants))
    settings = f"- every variant: {' '.join(common) or '(demo config as shipped)'}\n" + "\n".join(f"- `{name}`: {' '.join(o) or '(demo config as shipped)'}" for name, o in variants.items())
    text = "\n".join(["# Preservation benchmark (generated by benchmarks/preserve_demo.py)", "", settings, "", *lines, "", *CAVEATS, ""])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    write_raw(raw(results, variants, common), args.results)
    print(text)


if __name__ == "__main__":
    main()
