"""``adapt3d adapt``: evaluate the frozen core, train adapters, evaluate again, write the run."""

from __future__ import annotations

import csv
import logging
import dataclasses
import time
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from adapt3d.atomic import atomic_file
from adapt3d.cores import load_core
from adapt3d.errors import ConfigError
from adapt3d.evaluate.nclick import Protocol, evaluate_items
from adapt3d.runs import SCHEMA, caveats, env_record, now, prepare_run_dir, write_json
from adapt3d.train.config import ExperimentConfig, config_hash, config_yaml
from adapt3d.train.data import CropDataset, EpochSampler
from adapt3d.train.domains import Domain, extra_items, load_domain
from adapt3d.train.module import AdaptModule
from adapt3d.train.retention import RetentionMonitor, mean_dice
from adapt3d.tuners import AdaptedModel, format_report, save_adapter

for _name in ("lightning.pytorch", "lightning.fabric"):  # Lightning sets INFO when imported: keep warnings only
    logging.getLogger(_name).setLevel(logging.WARNING)


def protocol_of(cfg: ExperimentConfig) -> Protocol:
    clicks = tuple(sorted(set(cfg.eval.clicks) | {cfg.retention.clicks}))
    return Protocol(
        clicks=clicks,
        simulator=cfg.eval.simulator,
        nsd_tolerance_mm=cfg.eval.nsd_tolerance_mm,
        seed=cfg.seed,
        target_spacing=tuple(cfg.data.target_spacing),
        normalization=cfg.data.normalization,
    )


def _evaluate(model, domain: Domain, protocol: Protocol, run_dir: Path, stage: str, save: bool) -> dict:
    out = run_dir / "predictions" / domain.name / stage if save else None
    return evaluate_items(
        model, domain.split.test, domain.modality, protocol, predictions_dir=out, run_dir=run_dir, desc=f"{stage}: {domain.name}"
    )


def run_adaptation(
    cfg: ExperimentConfig, *, overwrite: bool = False, resume: bool = False, callbacks: tuple = ()
) -> Path | None:
    """Run an adaptation experiment; returns the run directory (None on non-zero DDP ranks)."""
    started, t0 = now(), time.time()
    adapter_cfg = cfg.adapter_config
    if adapter_cfg.method == "none":
        raise ConfigError("adapter.method none trains nothing: use 'adapt3d evaluate' for the frozen core")
    target = load_domain(cfg.data.target, "target", seed=cfg.seed)
    reference = load_domain(cfg.data.reference, "reference", seed=cfg.seed, all_test=True) if cfg.data.reference else None
    train_items = list(target.split.train)
    if cfg.pseudolabel.enabled:
        pseudo = extra_items(cfg.pseudolabel.path, cfg.data.target.classes, min_voxels=cfg.data.target.min_voxels)
        held_out = {(i.case.case_id, i.class_name) for i in target.split.test + target.split.val}
        pseudo = [i for i in pseudo if (i.case.case_id, i.class_name) not in held_out]  # never train on test objects
        train_items = pseudo if cfg.pseudolabel.mode == "replace" else train_items + pseudo
    if not train_items:
        raise ConfigError(f"{cfg.pseudolabel.path or target.dataset.root}: no training items after the declared split")
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # also makes a randomly initialised core reproducible
    core = load_core(cfg.core.name, cfg.core.checkpoint, **cfg.core.arch)
    run_dir = cfg.run_dir
    is_zero = rank_zero_only.rank == 0
    if is_zero:
        prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    protocol = protocol_of(cfg)
    save = cfg.eval.save_predictions
    before = {}
    if is_zero:
        before[target.name] = _evaluate(core, target, protocol, run_dir, "before", save)
        if reference:
            before[reference.name] = _evaluate(core, reference, protocol, run_dir, "before", save)
    frozen = mean_dice(before[reference.name], cfg.retention.clicks) if reference and is_zero else None

    model = AdaptedModel(core)
    model.add(adapter_cfg)
    report = model.trainable_report()
    if is_zero:
        print(format_report(report, adapter_cfg))
    dataset = CropDataset(
        train_items, target.modality, size=core.image_size, target_spacing=tuple(cfg.data.target_spacing),
        normalization=cfg.data.normalization, seed=cfg.seed, samples_per_item=cfg.train.samples_per_item,
        jitter=cfg.train.jitter, augment=cfg.train.augment,
    )
    extra_loss = None
    if cfg.context_head.enabled:
        from adapt3d.train.context import context_loss_for

        extra_loss = context_loss_for(model, cfg, target)
    module = AdaptModule(model, cfg.train, cfg.seed, extra_loss=extra_loss)
    if extra_loss is not None and cfg.context_head.pretrain_epochs > 0 and not resume:
        _context_stage(module, cfg, dataset, run_dir)
    monitor = RetentionMonitor(
        reference=reference.split.test if reference else [], reference_modality=reference.modality if reference else "CT",
        frozen_dice=frozen, target_val=target.split.val, target_modality=target.modality, protocol=protocol,
        val_clicks=cfg.eval.val_clicks, section=cfg.retention, every_n_epochs=cfg.eval.every_n_epochs,
    )
    checkpoints = ModelCheckpoint(  # one rolling checkpoints/last.ckpt (adapter weights + optimizer + loops)
        dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False,
        every_n_epochs=cfg.train.checkpoint_every_n_epochs, save_on_train_epoch_end=True,
    )
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=cfg.train.strategy, precision=cfg.train.precision,
        logger=CSVLogger(run_dir, name="logs", version=""), callbacks=[monitor, checkpoints, *callbacks],
        use_distributed_sampler=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        default_root_dir=run_dir,
    )
    sampler = EpochSampler(len(dataset), cfg.seed, rank=trainer.global_rank, world=trainer.world_size)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=cfg.train.num_workers,
                        pin_memory=trainer.strategy.root_device.type == "cuda")  # asynchronous host→GPU copies
    last = run_dir / "checkpoints" / "last.ckpt"
    module.train()  # adapter dropout active; the frozen core has no mode-dependent layers
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume and last.exists() else None)
    best_step = monitor.restore_best(module)
    if not trainer.is_global_zero:
        return None

    model.set_trainable(None)
    after = {target.name: _evaluate(model, target, protocol, run_dir, "after", save)}
    if reference:
        after[reference.name] = _evaluate(model, reference, protocol, run_dir, "after", save)
    domains = {d.name: {**d.record(), "before": before[d.name], "after": after[d.name]} for d in (target, reference) if d}
    retention = None
    if reference:
        final = mean_dice(after[reference.name], cfg.retention.clicks) / frozen if frozen else float("nan")
        retention = {
            "reference_domain": reference.name, "metric": "dice", "clicks": cfg.retention.clicks, "frozen": frozen,
            "history": monitor.history, "final": final, "best_checkpoint_step": best_step,
            "guard": {**dataclasses.asdict(cfg.retention), "triggered": monitor.triggered},
        }
    info = {
        "data": f"{target.dataset.name} ({target.modality}{', SIMULATED' if target.section.simulated else ''}): "
        f"{len(train_items)} training items ({', '.join(sorted({i.class_name for i in train_items}))})",
        "caveats": caveats(cfg.core.description, domains),
        "metrics": _card_metrics(domains, target.name, protocol, retention),
    }
    save_adapter(model, run_dir / "adapter", info=info, overwrite=True)
    size = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    _write_retention_csv(run_dir / "retention.csv", monitor.history, frozen)
    with atomic_file(run_dir / "config.yaml") as tmp:
        tmp.write_text(config_yaml(cfg))
    data_hashes = {d.dataset.name: domains[d.name]["data_hash"] for d in (target, reference) if d}
    write_json(run_dir / "env.json", env_record(
        seed=cfg.seed, config_hash=config_hash(cfg), data_hashes=data_hashes, core_fingerprint=model.fingerprint,
        device=str(trainer.strategy.root_device), started=started, finished=now(), wall_seconds=round(time.time() - t0, 1),
    ))
    metrics = {
        "schema": SCHEMA, "kind": "adapt", "name": cfg.name,
        "core": {"name": cfg.core.name, "checkpoint": cfg.core.checkpoint, "fingerprint": model.fingerprint,
                 "description": cfg.core.description},
        "adapter": {**adapter_cfg.to_dict(), "trainable_parameters": report["trainable_parameters"],
                    "trainable_percent": report["trainable_percent"], "size_bytes": size, "dir": "adapter"},
        "clicks": list(protocol.clicks), "nsd_tolerance_mm": protocol.nsd_tolerance_mm,
        "domains": domains, "retention": retention,
        "training": {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
                     "wall_seconds": round(time.time() - t0, 1), "loss_history": module.loss_history,
                     "context_head": cfg.context_head.enabled, "pseudolabels": cfg.pseudolabel.enabled},
        "caveats": info["caveats"],
    }
    write_json(run_dir / "metrics.json", metrics)
    return run_dir


def _context_stage(module: AdaptModule, cfg: ExperimentConfig, dataset: CropDataset, run_dir: Path) -> None:
    """Context-only pre-adaptation: the adapters learn from the contrastive task before segmentation."""
    module.seg_enabled = False
    stage = L.Trainer(
        max_epochs=cfg.context_head.pretrain_epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=cfg.train.strategy, precision=cfg.train.precision,
        logger=CSVLogger(run_dir, name="logs", version="context"), enable_checkpointing=False,
        use_distributed_sampler=False, enable_model_summary=False, log_every_n_steps=1,
    )
    sampler = EpochSampler(len(dataset), cfg.seed + 1, rank=stage.global_rank, world=stage.world_size)
    module.train()
    stage.fit(module, train_dataloaders=DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler))
    module.seg_enabled = True


def _card_metrics(domains: dict, target: str, protocol: Protocol, retention: dict | None) -> dict:
    k = str(max(protocol.clicks))
    out = {}
    for stage in ("before", "after"):
        s = domains[target][stage]["summary"][k]["dice"]
        out[f"{target} Dice@{k} {stage}"] = f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f} (n={s['n']})"
    if retention:
        out[f"CT retention@{retention['clicks']}"] = f"{retention['final']:.3f}"
    return out


def _write_retention_csv(path: Path, history: list[dict], frozen: float | None) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", "ct_dice", "retention", "target_val_dice"])
        for h in history:
            ct = h["retention"] * frozen if frozen and h["retention"] == h["retention"] else ""
            writer.writerow([h["step"], h["epoch"], ct, h["retention"], h["target_dice"]])
