"""What an adaptation run writes beside its adapter: metrics.json, env.json, retention.csv, config."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from adapt3d.atomic import atomic_file
from adapt3d.evaluate.nclick import Protocol
from adapt3d.run_record import history_entry, run_record
from adapt3d.train.config import ExperimentConfig, config_yaml


def retention_record(cfg: ExperimentConfig, reference: str, frozen: float | None, final: float, monitor,
                     best_step: int | None, merged: dict | None) -> dict:
    """The ``retention`` block of metrics.json (``merged``: the merged export's own CT retention)."""
    return {
        "reference_domain": reference, "metric": "dice", "clicks": cfg.retention.clicks, "frozen": frozen,
        "history": [history_entry(h, frozen) for h in monitor.history], "final": final, "best_checkpoint_step": best_step,
        "guard": {**dataclasses.asdict(cfg.retention), "triggered": monitor.triggered}, "merged": merged,
    }


def guard_message(retention: dict) -> str:
    """One line saying what the retention guard decided (printed at the end of training)."""
    guard, history = retention["guard"], retention["history"]
    values = [h["retention"] for h in history if h["retention"] == h["retention"]]
    if not values:
        return "retention guard: no CT retention was measured"
    lowest = min(values)
    if not guard["triggered"]:
        return f"retention guard: not triggered (lowest retention {lowest:.3f} ≥ threshold {guard['threshold']:.3f})"
    kept = retention["best_checkpoint_step"]
    if guard["action"] == "stop":
        what = "training stopped early"
    else:
        what = "training went on"
    keep = f"kept the adapter of step {kept}" if kept is not None else "no validation met the threshold: kept the last adapter"
    return (f"retention guard: TRIGGERED (retention {lowest:.3f} < threshold {guard['threshold']:.3f}); "
            f"{what}; {keep}")


def card_metrics(domains: dict, target: str, protocol: Protocol, retention: dict | None) -> dict:
    """The headline figures of the adapter card."""
    k = str(max(protocol.clicks))
    out = {}
    for stage in ("before", "after"):
        s = domains[target][stage]["summary"][k]["dice"]
        out[f"{target} Dice@{k} {stage}"] = f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f} (n={s['n']})"
    if retention:
        out[f"CT retention@{retention['clicks']}"] = f"{retention['final']:.3f}"
    return out


def write_retention_csv(path: Path, history: list[dict], frozen: float | None) -> None:
    """retention.csv: one row per validation."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", "ct_dice", "retention", "target_val_dice"])
        for h in history:
            ct = history_entry(h, frozen)["ct_dice"]
            writer.writerow([h["step"], h["epoch"], ct if ct == ct else "", h["retention"], h["target_dice"]])


def write_config(path: Path, cfg: ExperimentConfig) -> None:
    """The resolved config.yaml."""
    with atomic_file(path) as tmp:
        tmp.write_text(config_yaml(cfg))


def metrics_record(cfg: ExperimentConfig, *, model, adapter_report: dict, size: int, protocol: Protocol,
                   domains: dict, retention: dict | None, trainer, module, wall: float, caveat_lines: list[str], context: dict | None,
                   preserve: dict | None) -> dict:
    """metrics.json of an adaptation run."""
    return run_record(
        "adapt", name=cfg.name,
        core={"name": cfg.core.name, "checkpoint": cfg.core.checkpoint, "fingerprint": model.fingerprint,
                 "description": cfg.core.description},
        adapter={**cfg.adapter.to_dict(), "trainable_parameters": adapter_report["trainable_parameters"],
                    "trainable_percent": adapter_report["trainable_percent"], "size_bytes": size, "dir": "adapter"},
        clicks=list(protocol.clicks), nsd_tolerance_mm=protocol.nsd_tolerance_mm,
        preprocessing={"spacing": None if protocol.target_spacing is None else list(protocol.target_spacing),
                           "normalization": protocol.normalization},
        domains=domains, retention=retention,
        training={"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
                     "wall_seconds": round(wall, 1), "loss_history": module.loss_history,
                     "context_head": cfg.context_head.enabled, "context": context, "pseudolabels": cfg.pseudolabel.enabled,
                     "preserve": preserve},
        caveats=caveat_lines,
    )
