"""``adapt3d adapt``: evaluate the frozen core, train adapters, evaluate again, write the run.

The whole experiment is checked first (seconds); the run then works in ``<name>.partial`` and gets
its final name only when it has finished, so a folder with the run's name is always complete.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from adapt3d.config import build_dataclass
from adapt3d.cores import core_spec, load_core
from adapt3d.data.domains import Domain, extra_items, load_domain
from adapt3d.errors import ConfigError, RunInterrupted
from adapt3d.evaluate.evaluators import EVALUATORS, evaluate_model
from adapt3d.evaluate.nclick import Protocol
from adapt3d.runs import RunFinished, caveats, claim_run_dir, env_record, finish_run_dir, now, partial_dir, write_json
from adapt3d.train.checkpoint_io import SafeCheckpointIO
from adapt3d.train.checks import check_experiment
from adapt3d.train.config import ExperimentConfig, config_hash, load_experiment, problem_summary
from adapt3d.train.context import context_loss_for, context_pool
from adapt3d.train.data import CropDataset, EpochSampler
from adapt3d.train.merged import merged_retention
from adapt3d.train.module import AdaptModule
from adapt3d.train.preserve import Preservation, preservation_source
from adapt3d.train.progress import TrainingProgress
from adapt3d.train.recipes import RECIPES, crops_for
from adapt3d.train.record import card_metrics, guard_message, metrics_record, retention_record, write_config, write_retention_csv
from adapt3d.train.retention import RetentionMonitor, mean_dice
from adapt3d.tuners import AdaptedModel, format_report, save_adapter

for _name in ("lightning.pytorch", "lightning.fabric"):  # Lightning sets INFO when imported: keep warnings only
    logging.getLogger(_name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hide the libraries' deprecation notices and folder-reuse notes (a resumed run reuses its folders)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning|torch|peft)(\.|$)")
        yield


def protocol_of(cfg: ExperimentConfig, core) -> Protocol:
    """The core's N-click protocol (its contract's evaluator, with ``eval.options``): the
    experiment's clicks at the core's preprocessing (unless overridden)."""
    prep = core.preprocessing
    spacing = cfg.data.target_spacing or prep.spacing
    evaluator = EVALUATORS.get(core_spec(core).contract.evaluation)
    return build_dataclass(evaluator.protocol, {
        **cfg.eval.options,
        "clicks": tuple(sorted(set(cfg.eval.clicks) | {cfg.retention.clicks})),
        "simulator": cfg.eval.simulator,
        "nsd_tolerance_mm": cfg.eval.nsd_tolerance_mm,
        "seed": cfg.seed,
        "target_spacing": tuple(spacing) if spacing else None,
        "normalization": cfg.data.normalization or prep.normalization,
    }, "eval.options")


def _evaluate(model, domain: Domain, protocol: Protocol, run_dir: Path, stage: str, save: bool, auto=None) -> dict:
    out = run_dir / "predictions" / domain.name / stage if save else None
    return evaluate_model(
        model, domain.split.test, domain.modality, protocol, predictions_dir=out, run_dir=run_dir, desc=f"{stage}: {domain.name}",
        auto=auto,
    )


def _claim(cfg: ExperimentConfig, *, overwrite: bool, resume: bool) -> Path:
    work = claim_run_dir(cfg.run_dir, overwrite=overwrite, resume=resume)
    saved = work / "config.yaml"
    if resume and saved.is_file() and config_hash(load_experiment(saved)) != config_hash(cfg):
        raise ConfigError(f"{work}: --resume needs the same settings as the interrupted run (they are in {saved})")
    write_config(saved, cfg)
    return work


def run_adaptation(
    cfg: ExperimentConfig, *, overwrite: bool = False, resume: bool = False, callbacks: tuple = ()
) -> Path | None:
    """Run an adaptation experiment; returns the finished run directory (None on non-zero DDP ranks)."""
    problems = check_experiment(cfg)
    if problems:
        raise ConfigError(problem_summary(f"experiment {cfg.name!r}", problems))
    if rank_zero_only.rank == 0:
        try:
            work = _claim(cfg, overwrite=overwrite, resume=resume)
        except RunFinished as finished:
            print(finished)
            return cfg.run_dir
    else:
        work = partial_dir(cfg.run_dir)
    try:
        with _quiet_libraries():
            done = _run(cfg, work, resume=resume, callbacks=callbacks)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted: the unfinished run is in {work}; continue it with the same command and --resume"
        ) from None
    return finish_run_dir(work, cfg.run_dir) if done else None


def _fit(trainer: L.Trainer, module: L.LightningModule, loader: DataLoader, ckpt: str | None) -> None:
    """``trainer.fit``; Lightning turns Ctrl-C into ``sys.exit(1)``: turn it back into an interrupt."""
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


def _trainer(cfg: ExperimentConfig, run_dir: Path, *, label: str, log_version: str, callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator=cfg.train.accelerator, devices=cfg.train.devices, num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy, precision=cfg.train.precision,
        logger=CSVLogger(run_dir, name="logs", version=log_version), callbacks=[TrainingProgress(label), *callbacks],
        use_distributed_sampler=False, enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=run_dir, plugins=[SafeCheckpointIO()], **kwargs,
    )


def _run(cfg: ExperimentConfig, run_dir: Path, *, resume: bool, callbacks: tuple) -> bool:
    started, t0 = now(), time.time()
    adapter_cfg = cfg.adapter
    target = load_domain(cfg.data.target, "target", seed=cfg.seed)
    reference = load_domain(cfg.data.reference, "reference", seed=cfg.seed, all_test=True) if cfg.data.reference else None
    source = preservation_source(cfg.retention, reference) if cfg.retention.preserve else None  # checked before model work
    train_items = list(target.split.train)
    if cfg.pseudolabel.enabled:
        pseudo = extra_items(cfg.pseudolabel.path, cfg.data.target.classes, min_voxels=cfg.data.target.min_voxels)
        held_out = {(i.case.case_id, i.class_name) for i in target.split.test + target.split.val}
        pseudo = [i for i in pseudo if (i.case.case_id, i.class_name) not in held_out]  # never train on test objects
        train_items = pseudo if cfg.pseudolabel.mode == "replace" else train_items + pseudo
    if not train_items:
        raise ConfigError(f"{cfg.pseudolabel.path or target.dataset.root}: no training items after the declared split")
    pool = context_pool(cfg, target) if cfg.context_head.enabled else None  # checked before any model work
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # also makes a randomly initialised core reproducible
    core = load_core(cfg.core.name, cfg.core.checkpoint, **cfg.core.arch)
    is_zero = rank_zero_only.rank == 0
    protocol = protocol_of(cfg, core)
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
    recipe = RECIPES.get(core_spec(core).contract.training)
    dataset = crops_for(recipe, train_items, target.modality, size=core.image_size, spacing=protocol.target_spacing,
                        normalization=protocol.normalization, seed=cfg.seed, train=cfg.train)
    extra_loss, context = (None, None) if pool is None else context_loss_for(model, cfg, pool, protocol)
    preserve = Preservation(model, source, cfg.retention, normalization=protocol.normalization, spacing=protocol.target_spacing,
                            simulator=cfg.eval.simulator, seed=cfg.seed) if source else None  # before any training step
    module = AdaptModule(model, cfg.train, cfg.seed, modality=target.modality, class_names=dataset.class_names,
                         extra_loss=extra_loss, preserve=preserve)
    last = run_dir / "checkpoints" / "last.ckpt"
    resuming = resume and last.exists()
    if extra_loss is not None and cfg.context_head.pretrain_epochs > 0 and not resuming:
        context.update(_context_stage(module, cfg, dataset, run_dir))
    monitor = RetentionMonitor(
        reference=reference.split.test if reference else [], reference_modality=reference.modality if reference else "CT",
        frozen_dice=frozen, target_val=target.split.val, target_modality=target.modality, protocol=protocol,
        val_clicks=cfg.eval.val_clicks, section=cfg.retention, every_n_epochs=cfg.eval.every_n_epochs,
    )
    checkpoints = ModelCheckpoint(  # one rolling checkpoints/last.ckpt (adapter weights + optimizer + loops)
        dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False,
        every_n_epochs=cfg.train.checkpoint_every_n_epochs, save_on_train_epoch_end=True,
    )
    trainer = _trainer(cfg, run_dir, label="adapting", log_version="", callbacks=[monitor, checkpoints, *callbacks],
                       max_epochs=cfg.train.epochs)
    if cfg.auto.enabled:  # learned class prompts, trained with the adapter (adapt3d.auto)
        from adapt3d.auto.training import auto_training
        module.auto, dataset = auto_training(dataset, core, tokens_per_class=cfg.auto.tokens_per_class,
                                             random_crops=cfg.auto.random_crops, weight=cfg.auto.weight, seed=cfg.seed)
    sampler = EpochSampler(len(dataset), cfg.seed, rank=trainer.global_rank, world=trainer.world_size)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=cfg.train.num_workers,
                        pin_memory=trainer.strategy.root_device.type == "cuda")  # asynchronous host→GPU copies
    module.train()  # adapter dropout active; the frozen core has no mode-dependent layers
    _fit(trainer, module, loader, str(last) if resuming else None)
    best_step = monitor.restore_best(module)
    if not trainer.is_global_zero:
        return False

    model.set_trainable(None)
    auto = None if module.auto is None else module.auto.evaluator(model, protocol, target.modality)  # "0 clicks (auto)"
    after = {target.name: _evaluate(model, target, protocol, run_dir, "after", save, auto)}
    if reference:
        after[reference.name] = _evaluate(model, reference, protocol, run_dir, "after", save)
    domains = {d.name: {**d.record(), "before": before[d.name], "after": after[d.name]} for d in (target, reference) if d}
    retention = None
    if reference:
        final = mean_dice(after[reference.name], cfg.retention.clicks) / frozen if frozen else float("nan")
        merged = merged_retention(model, reference, protocol, before[reference.name], cfg.retention.clicks)
        retention = retention_record(cfg, reference.name, frozen, final, monitor, best_step, merged)
        print(guard_message(retention))
    caveat_lines = caveats(cfg.core.description, domains) + ([context["caveat"]] if context else [])
    info = {
        "data": f"{target.dataset.name} ({target.modality}{', SIMULATED' if target.section.simulated else ''}): "
        f"{len(train_items)} training items ({', '.join(sorted({i.class_name for i in train_items}))})",
        "caveats": caveat_lines,
        "metrics": card_metrics(domains, target.name, protocol, retention),
    }
    save_adapter(model, run_dir / "adapter", info=info, overwrite=True)
    if module.auto is not None:
        module.auto.save(run_dir / "adapter")  # class_prompts.safetensors beside the adapter
    size = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    write_retention_csv(run_dir / "retention.csv", monitor.history, frozen)
    data_hashes = {d.dataset.name: domains[d.name]["data_hash"] for d in (target, reference) if d}
    write_json(run_dir / "env.json", env_record(
        seed=cfg.seed, config_hash=config_hash(cfg), data_hashes=data_hashes, core_fingerprint=model.fingerprint,
        device=str(trainer.strategy.root_device), started=started, finished=now(), wall_seconds=round(time.time() - t0, 1),
    ))
    write_json(run_dir / "metrics.json", metrics_record(
        cfg, model=model, adapter_report=report, size=size, protocol=protocol, domains=domains, retention=retention,
        trainer=trainer, module=module, wall=time.time() - t0, caveat_lines=caveat_lines, context=context,
        preserve=preserve.record() if preserve else None,
    ))
    return True


def _context_stage(module: AdaptModule, cfg: ExperimentConfig, dataset: CropDataset, run_dir: Path) -> dict:
    """The recipe's first stage: the adapters (in effect the encoder's, the decoder gets no gradient)
    and the head learn the contrastive task alone; returns its steps, time and loss history."""
    t0 = time.time()
    module.seg_enabled = False
    stage = _trainer(cfg, run_dir, label="context stage", log_version="context", callbacks=[],
                     max_epochs=cfg.context_head.pretrain_epochs, enable_checkpointing=False)
    sampler = EpochSampler(len(dataset), cfg.seed + 1, rank=stage.global_rank, world=stage.world_size)
    module.train()
    _fit(stage, module, DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler), None)
    module.seg_enabled = True
    history, module.loss_history = module.loss_history, []
    return {"context_steps": int(stage.global_step), "context_seconds": round(time.time() - t0, 1), "context_loss_history": history}
