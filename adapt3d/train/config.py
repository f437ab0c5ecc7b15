"""Experiment configuration: OmegaConf YAML + dotlist overrides, validated into dataclasses."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adapt3d.config import build_dataclass, to_plain
from adapt3d.errors import ConfigError
from adapt3d.tuners.config import AdapterConfig


@dataclass(frozen=True)
class SplitSection:
    """Items (case × class) of a split: by case id or by class name."""

    cases: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainSection:
    """A dataset in nnU-Net raw layout playing one role in the experiment."""

    path: str = ""
    name: str = ""  # short domain name in reports (default: the dataset folder name)
    classes: tuple[str, ...] = ()  # empty: every class present
    modality: str = "auto"  # auto: from dataset.json channel_names
    simulated: bool = False  # e.g. ultrasound rendered from MRI: reports say "simulated"
    silver_standard: bool = False  # labels are model predictions, not manual tracings
    val: SplitSection = field(default_factory=SplitSection)
    test: SplitSection = field(default_factory=SplitSection)
    test_fraction: float = 0.3
    min_voxels: int = 100


@dataclass(frozen=True)
class CoreSection:
    name: str = "sam-med3d"
    checkpoint: str | None = None
    arch: dict = field(default_factory=dict)  # architecture overrides (small cores)
    description: str = ""  # what the core was trained on: stated in every report


@dataclass(frozen=True)
class DataSection:
    target: DomainSection = field(default_factory=DomainSection)
    reference: DomainSection | None = None  # the CT set for Dice retention
    target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    normalization: str = "sam-med3d"


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 10
    samples_per_item: int = 4  # random crops per item and epoch
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    click_rounds: int = 5  # iterative click rounds per volume, as SAM-Med3D trains
    click_simulator: str = "random"
    jitter: float = 0.1  # crop-centre jitter, fraction of the crop side (SAM-Med3D trains on object-centred crops)
    augment: bool = True
    precision: str = "32-true"  # or bf16-mixed
    grad_checkpointing: bool = False
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # ddp for multi-GPU / multi-node
    num_workers: int = 0
    checkpoint_every_n_epochs: int = 1


@dataclass(frozen=True)
class EvalSection:
    clicks: tuple[int, ...] = (1, 3, 5, 10)
    simulator: str = "center"
    nsd_tolerance_mm: float = 2.0
    every_n_epochs: int = 1  # validation (target val Dice + CT retention)
    val_clicks: tuple[int, ...] = (1, 5)
    save_predictions: bool = True


@dataclass(frozen=True)
class RetentionSection:
    clicks: int = 1  # click count at which retention is measured during training
    threshold: float = 0.0  # guard: retention below this triggers the action
    action: str = "keep-best"  # keep-best | stop | none
    # preservation objective (docs/retention.md): distil the frozen core's outputs on unlabelled CT crops
    preserve: bool = False  # true: the settings below (their defaults are the recommended setting)
    preserve_weight: float = 1.0  # weight of the preservation loss next to the segmentation loss
    preserve_crops: int = 2  # CT crops per training step (the extra cost per step scales with it)
    preserve_pool: int = 16  # distinct CT crops whose frozen outputs are cached before training
    preserve_clicks: int = 3  # click rounds per CT crop (mask fed back, as the N-click protocol does)
    preserve_target: str = "both"  # logits | embeddings | both
    preserve_path: str = ""  # nnU-Net dataset of (unlabelled) CT images; empty: the reference set's images

    def __post_init__(self) -> None:
        if self.action not in ("keep-best", "stop", "none"):
            raise ValueError(f"retention.action must be keep-best, stop or none, not {self.action!r}")
        if self.preserve_target not in ("logits", "embeddings", "both"):
            raise ValueError(f"retention.preserve_target must be logits, embeddings or both, not {self.preserve_target!r}")
        if isinstance(self.preserve_weight, bool) or not isinstance(self.preserve_weight, (int, float)) or not self.preserve_weight >= 0:
            raise ValueError(f"retention.preserve_weight must be >= 0, not {self.preserve_weight!r}")
        for key in ("preserve_crops", "preserve_pool", "preserve_clicks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"retention.{key} must be an integer >= 1, not {value!r}")


@dataclass(frozen=True)
class ContextHeadSection:
    enabled: bool = False
    base_crops: int = 4
    random_crops: int = 4
    momentum: float = 0.9
    weight: float = 0.1
    projection_dim: int = 128
    pretrain_epochs: int = 0  # > 0: a context-only stage before the segmentation training


@dataclass(frozen=True)
class PseudoLabelSection:
    enabled: bool = False
    path: str = ""  # an nnU-Net dataset of pseudo-labels ("ignore" label = unknown), from `adapt3d pseudolabel`
    mode: str = "add"  # add: train on the target's items and the pseudo-labels; replace: pseudo-labels only

    def __post_init__(self) -> None:
        if self.mode not in ("add", "replace"):
            raise ValueError(f"pseudolabel.mode must be add or replace, not {self.mode!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    core: CoreSection = field(default_factory=CoreSection)
    adapter: dict = field(default_factory=dict)  # AdapterConfig fields
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    context_head: ContextHeadSection = field(default_factory=ContextHeadSection)
    pseudolabel: PseudoLabelSection = field(default_factory=PseudoLabelSection)

    @property
    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig.from_dict(self.adapter, where="adapter")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_experiment(path: str | os.PathLike | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment (or start from defaults), apply ``key=value`` overrides, validate.

    Relative data/checkpoint paths in the file are resolved against the file's folder.
    """
    base: Any = OmegaConf.create({})
    if path is not None:
        path = Path(path)
        base = _read_yaml(path)
        for section in INCLUDABLE:  # `core: ../core/demo-tiny.yaml` includes that file as the section
            value = base.get(section)
            if isinstance(value, str) and value.endswith((".yaml", ".yml")):
                base[section] = _read_yaml((path.parent / value).resolve())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. adapter.rank=8)")
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        values = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    cfg = build_dataclass(ExperimentConfig, values, where=str(path) if path else "config")
    cfg.adapter_config  # validate the adapter section now  # noqa: B018
    if path is not None:
        cfg = _resolve_paths(cfg, path.parent)
    return cfg


#: top-level sections that may name a YAML file to include (configs/core, configs/adapter)
INCLUDABLE = ("core", "adapter", "train", "eval", "retention", "context_head")


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None


def _resolve_paths(cfg: ExperimentConfig, folder: Path) -> ExperimentConfig:
    import dataclasses

    def fix(p: str | None) -> str | None:
        if not p:
            return p
        q = Path(os.path.expanduser(p))
        return str(q if q.is_absolute() else (folder / q).resolve())

    data = cfg.data
    target = dataclasses.replace(data.target, path=fix(data.target.path) or "")
    reference = dataclasses.replace(data.reference, path=fix(data.reference.path) or "") if data.reference else None
    core = dataclasses.replace(cfg.core, checkpoint=fix(cfg.core.checkpoint))
    pseudo = dataclasses.replace(cfg.pseudolabel, path=fix(cfg.pseudolabel.path) or "")
    return dataclasses.replace(
        cfg, data=dataclasses.replace(data, target=target, reference=reference), core=core, pseudolabel=pseudo
    )


def config_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what every run saves)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg)))


def config_hash(cfg: ExperimentConfig) -> str:
    """Short hash of the resolved config."""
    return hashlib.sha256(config_yaml(cfg).encode()).hexdigest()[:16]
