"""Checks of a whole experiment against the file system and the registries, before any model work.

:func:`check_experiment` lists every problem (one line each, naming the key): missing datasets or
checkpoint, class names and case ids that the dataset does not have, adapter targets the core does
not know, unknown registry names. It reads ``dataset.json`` and file names only (seconds).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from adapt3d.data.domain_config import DomainSection
from adapt3d.errors import Adapt3dError
from adapt3d.train.config import ExperimentConfig


def _names(problems: list[str], key: str, given: tuple[str, ...], valid: list[str], what: str, where: Path) -> None:
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{key}: unknown {what} {name!r} (not in {where}){hint}")


def _dataset(problems: list[str], key: str, path: str):
    """The scanned nnU-Net dataset at ``path`` (None after adding its problems)."""
    from adapt3d.data.nnunet import scan_dataset

    root = Path(path)
    if not (root / "dataset.json").is_file():
        problems.append(f"{key}: {root}: not an nnU-Net raw dataset (no dataset.json)" if root.is_dir()
                        else f"{key}: {root}: dataset folder not found")
        return None
    try:
        ds, found = scan_dataset(root)
    except Adapt3dError as exc:
        problems.append(f"{key}: {exc}")
        return None
    problems += [f"{key}: {root}: {p}" for p in found]
    return None if found else ds


def _domain(problems: list[str], key: str, section: DomainSection | None, *, required: bool) -> None:
    from adapt3d.data.nnunet import normalise_modality

    if section is None:
        return
    if not section.path:
        if required:
            problems.append(f"{key}.path: not set (an nnU-Net v2 raw dataset folder)")
        return
    ds = _dataset(problems, f"{key}.path", section.path)
    if ds is None:
        return
    root = ds.root
    classes = sorted(ds.classes)
    labels = root / "dataset.json"
    _names(problems, f"{key}.classes", section.classes, classes, "class", labels)
    cases = sorted({c.case_id for c in ds.labelled} | {c.case_id for c in ds.test if c.label_path is not None})
    for split in ("val", "test"):
        rule = getattr(section, split)
        _names(problems, f"{key}.{split}.classes", rule.classes, classes, "class", labels)
        _names(problems, f"{key}.{split}.cases", rule.cases, cases, "labelled case", root)
    if section.modality != "auto":
        try:
            normalise_modality(section.modality)
        except Adapt3dError as exc:
            problems.append(f"{key}.modality: {exc}")


def _registry(problems: list[str], key: str, registry, name: str | None) -> None:
    if name is not None and name not in registry:
        problems.append(f"{key}: {registry.unknown_message(name)}")


def _contract(cfg: ExperimentConfig, spec) -> list[str]:
    """What the core's contract cannot do that the experiment asks for."""
    from adapt3d.config import check_values
    from adapt3d.evaluate.evaluators import EVALUATORS
    from adapt3d.train.recipes import RECIPES

    contract, problems = spec.contract, []
    if contract.training is None:
        problems.append(f"core.name: {spec.name} has no training recipe in its contract: it can be evaluated, not adapted")
    elif contract.training not in RECIPES:
        problems.append(f"core.name: {spec.name}'s contract names training recipe {contract.training!r}: {RECIPES.unknown_message(contract.training)}")
    if contract.evaluation not in EVALUATORS:
        problems.append(f"core.name: {spec.name}'s contract names evaluator {contract.evaluation!r}: {EVALUATORS.unknown_message(contract.evaluation)}")
    else:
        problems += [p.replace("config: ", "eval.options: ") for p in
                     check_values(EVALUATORS.get(contract.evaluation).protocol, cfg.eval.options, "eval.options.")]
    cubic_clicks = contract.training == "click-rounds"  # cubic crops at a spacing, clicks with mask feedback
    if cfg.retention.preserve and not cubic_clicks:
        problems.append(f"retention.preserve: not available for {spec.name} (it distils click rounds with mask feedback on cubic crops)")
    if cfg.auto.enabled:  # class prompts of the kind the contract takes (adapt3d.auto.prompts)
        from adapt3d.auto.prompts import contract_problems
        problems += contract_problems(spec, cfg.auto.tokens_per_class)
    if cfg.context_head.enabled and not cubic_clicks:
        problems.append(f"context_head.enabled: not available for {spec.name} (the context head cuts cubic crops)")
    return problems


def check_experiment(cfg: ExperimentConfig) -> list[str]:
    """Every problem of ``cfg`` that the schema cannot see, one line each (empty: all good)."""
    from adapt3d.config import check_values
    from adapt3d.cores.registry import CORES
    from adapt3d.data.preprocess import NORMALISERS
    from adapt3d.prompts.clicks import CLICK_SIMULATORS
    from adapt3d.tuners.targets import TARGET_TABLES

    problems: list[str] = []
    _registry(problems, "core.name", CORES, cfg.core.name)
    if cfg.core.name in CORES:
        spec = CORES.get(cfg.core.name)
        problems += [p.replace("config: ", "core.arch: ") for p in check_values(spec.config_cls, cfg.core.arch, "core.arch.")]
        problems += _contract(cfg, spec)
        table = TARGET_TABLES.get(cfg.core.name) if cfg.core.name in TARGET_TABLES else None
        if table is not None:
            valid = sorted(table.names)
            for target in cfg.adapter.targets:
                if target not in table.names and not any(ch in target for ch in "*?["):
                    close = difflib.get_close_matches(target, valid, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    problems.append(f"adapter.targets: {target!r} is not a target of {cfg.core.name}{hint}; "
                                    f"valid: {', '.join(valid)} (or a glob over module names)")
    if cfg.core.checkpoint and not Path(cfg.core.checkpoint).is_file():
        problems.append(f"core.checkpoint: {cfg.core.checkpoint}: checkpoint not found")
    if cfg.adapter.method == "none" and not cfg.auto.enabled:  # with auto: the class prompts alone train
        problems.append("adapter.method: none trains nothing (use 'adapt3d evaluate' for the frozen core)")
    _domain(problems, "data.target", cfg.data.target, required=True)
    _domain(problems, "data.reference", cfg.data.reference, required=False)
    _registry(problems, "data.normalization", NORMALISERS, cfg.data.normalization)
    _registry(problems, "train.click_simulator", CLICK_SIMULATORS, cfg.train.click_simulator)
    _registry(problems, "eval.simulator", CLICK_SIMULATORS, cfg.eval.simulator)
    if cfg.pseudolabel.enabled:
        if not cfg.pseudolabel.path:
            problems.append("pseudolabel.path: not set while pseudolabel.enabled is true")
        else:
            _dataset(problems, "pseudolabel.path", cfg.pseudolabel.path)
    if cfg.context_head.enabled and cfg.context_head.pool:
        _dataset(problems, "context_head.pool", cfg.context_head.pool)
    if cfg.retention.preserve:
        if cfg.retention.preserve_path:
            _dataset(problems, "retention.preserve_path", cfg.retention.preserve_path)
        elif cfg.data.reference is None:
            problems.append("retention.preserve needs CT images: set data.reference or retention.preserve_path")
    if cfg.train.devices > 1 and cfg.train.strategy == "auto":
        problems.append("train.strategy: set ddp (or another multi-device strategy) when train.devices > 1")
    return problems
