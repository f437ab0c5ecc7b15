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

    def __post_init__(self) -> None:
        if self.action not in ("keep-best", "stop", "none"):
            raise ValueError(f"retention.action must be keep-best, stop or none, not {self.action!r}")


@dataclass(frozen=True)
class ContextHeadSection:
    """The VoCo-style context head of the published recipe (USCL-Med3D); docs/recipe.md traces
    each default: [VoCo] = VoCo's paper/public code, which the recipe follows; [recipe] = the
    recipe's description; [adapt3d] = adapt3d's own choice where both are silent."""

    enabled: bool = False
    pool: str = ""  # nnU-Net raw dataset whose images (labelled or not) feed the head; "": the target's unlabelled images
    crop_mm: float = 0.0  # base-crop side in mm; 0: fitted to the pool's smallest field of view [adapt3d]
    base_crops: int = 4  # a 2 × 2 × 1 grid [adapt3d; VoCo tiles 4 × 4 × 1]
    random_crops: int = 4  # random crops per step [adapt3d; VoCo's sw_batch_size]
    momentum: float = 0.9  # EMA teacher momentum, fixed [VoCo code; recipe: EMA 0.9]
    reg_weight: float = 1.0  # base-crop regulariser weight [VoCo code: pred + reg, both weight 1]
    weight: float = 0.0  # context loss weight in the segmentation stage; 0: context stage only [recipe: two stages]
    projection_dim: int = 128  # [adapt3d; VoCo projects to 2048 with a 3-layer MLP]
    pretrain_epochs: int = 2  # context stage length, in epochs of the training loader [recipe: context stage first; count: adapt3d]

    def __post_init__(self) -> None:
        if not 2 <= self.base_crops <= 4:
            raise ValueError(f"context_head.base_crops must be 2, 3 or 4, not {self.base_crops}")
        if self.random_crops < 1 or self.projection_dim < 1 or self.pretrain_epochs < 0:
            raise ValueError("context_head.random_crops and projection_dim must be >= 1, pretrain_epochs >= 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"context_head.momentum must be in [0, 1), not {self.momentum}")
        if self.crop_mm < 0 or self.weight < 0 or self.reg_weight < 0:
            raise ValueError("context_head.crop_mm, weight and reg_weight must be >= 0")
        if self.enabled and self.pretrain_epochs == 0 and self.weight == 0:
            raise ValueError("context_head is enabled but trains nothing: set pretrain_epochs > 0 or weight > 0")


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
