"""Experiment configuration: the typed schema, presets by name, and ``key=value`` overrides.

An experiment is read in layers: the schema's defaults, the YAML file (a section may name a preset
or a YAML file: ``core: sam-med3d-turbo``, ``adapter: ../my_adapter.yaml``), then each command-line
override in order (``adapter.rank=8``; ``adapter=lora-r32`` or ``adapter=FILE.yaml`` swaps the whole
section). Paths in a file are relative to that file; paths on the command line to the working
directory. Every problem is reported at once (:func:`load_experiment`), before any model work.
"""

from __future__ import annotations

import hashlib
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adapt3d.config import build_dataclass, check_values, deep_merge, resolve_paths, setting, to_plain, typed_values
from adapt3d.data.domain_config import DomainSection
from adapt3d.errors import ConfigError
from adapt3d.presets import CONFIGS, find_preset, is_yaml_path, read_yaml
from adapt3d.tuners.config import AdapterConfig

# Lightning's own names (tests/test_config.py checks each against Lightning's registries). Spelt out
# here so that a bad setting is refused without importing Lightning (seconds saved on every error).
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine")
STRATEGIES = (
    "auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false", "fsdp", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2",
    "deepspeed_stage_3", "single_device",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
RETENTION_ACTIONS = ("keep-best", "stop", "none")


@dataclass(frozen=True)
class CoreSection:
    name: str = setting("sam-med3d", help="core registry name: sam-med3d, segvol, sam2d")
    checkpoint: str | None = setting(None, path=True, help="official checkpoint, state dict or safetensors (none: random weights)")
    arch: dict = setting(factory=dict, help="architecture overrides (small cores)")
    description: str = setting("", help="what the core was trained on: stated in every report")


@dataclass(frozen=True)
class DataSection:
    target: DomainSection = setting(factory=DomainSection)
    reference: DomainSection | None = setting(None, help="the CT set for Dice retention")
    target_spacing: tuple[float, float, float] | None = setting(
        None, each_gt=0.0, help="working spacing in mm (default: the core's own preprocessing)")
    normalization: str | None = setting(None, help="intensity normalisation (default: the core's own preprocessing)")


@dataclass(frozen=True)
class TrainSection:
    epochs: int = setting(10, ge=1)
    samples_per_item: int = setting(4, ge=1, help="random crops per item and epoch")
    batch_size: int = setting(2, ge=1)
    lr: float = setting(1e-3, gt=0.0)
    weight_decay: float = setting(0.01, ge=0.0)
    warmup_steps: int = setting(10, ge=0)
    click_rounds: int = setting(5, ge=1, help="iterative click rounds per volume, as SAM-Med3D trains")
    click_simulator: str = setting("random")
    jitter: float = setting(0.1, ge=0.0, lt=1.0, help="crop-centre jitter, fraction of the crop side")
    augment: bool = setting(True)
    precision: str = setting("32-true", choices=PRECISIONS, help="32-true, or bf16-mixed on GPUs")
    grad_checkpointing: bool = setting(False)
    accelerator: str = setting("auto", choices=ACCELERATORS)
    devices: int = setting(1, ge=1)
    num_nodes: int = setting(1, ge=1)
    strategy: str = setting("auto", choices=STRATEGIES, help="ddp for multi-GPU / multi-node")
    num_workers: int = setting(0, ge=0)
    checkpoint_every_n_epochs: int = setting(1, ge=1)


@dataclass(frozen=True)
class EvalSection:
    clicks: tuple[int, ...] = setting((1, 3, 5, 10), each_ge=1, non_empty=True)
    simulator: str = setting("center")
    nsd_tolerance_mm: float = setting(2.0, gt=0.0)
    every_n_epochs: int = setting(1, ge=1, help="validation (target val Dice + CT retention)")
    val_clicks: tuple[int, ...] = setting((1, 5), each_ge=1, non_empty=True)
    save_predictions: bool = setting(True)
    options: dict = setting(factory=dict, help="settings of the core's own N-click protocol, e.g. SegVol's text: true (adds 0 clicks = text alone)")


@dataclass(frozen=True)
class RetentionSection:
    clicks: int = setting(1, ge=1, help="click count at which retention is measured during training")
    threshold: float = setting(0.0, ge=0.0, help="guard: retention below this triggers the action")
    action: str = setting("keep-best", choices=RETENTION_ACTIONS)
    # preservation objective (docs/retention.md): distil the frozen core's outputs on unlabelled CT crops
    preserve: bool = setting(False, help="true: the settings below (their defaults are the recommended setting)")
    preserve_weight: float = setting(1.0, ge=0.0, help="weight of the preservation loss next to the segmentation loss")
    preserve_crops: int = setting(2, ge=1, help="CT crops per training step (the extra cost per step scales with it)")
    preserve_pool: int = setting(16, ge=1, help="distinct CT crops whose frozen outputs are cached before training")
    preserve_clicks: int = setting(3, ge=1, help="click rounds per CT crop (mask fed back, as the N-click protocol does)")
    preserve_target: str = setting("both", choices=("logits", "embeddings", "both"))
    preserve_path: str = setting("", path=True, help="nnU-Net dataset of (unlabelled) CT images; empty: the reference set's images")


@dataclass(frozen=True)
class ContextHeadSection:
    """The VoCo-style context head of the published recipe (USCL-Med3D); docs/recipe.md traces
    each default: [VoCo] = VoCo's paper/public code, which the recipe follows; [recipe] = the
    recipe's description; [adapt3d] = adapt3d's own choice where both are silent."""

    enabled: bool = False
    pool: str = setting("", path=True, help="nnU-Net raw dataset whose images (labelled or not) feed the head; '': the target's unlabelled images")
    crop_mm: float = setting(0.0, ge=0.0, help="base-crop side in mm; 0: fitted to the pool's smallest field of view [adapt3d]")
    base_crops: int = setting(4, ge=2, le=4, help="a 2 × 2 × 1 grid [adapt3d; VoCo tiles 4 × 4 × 1]")
    random_crops: int = setting(4, ge=1, help="random crops per step [adapt3d; VoCo's sw_batch_size]")
    momentum: float = setting(0.9, ge=0.0, lt=1.0, help="EMA teacher momentum, fixed [VoCo code; recipe: EMA 0.9]")
    reg_weight: float = setting(1.0, ge=0.0, help="base-crop regulariser weight [VoCo code: pred + reg, both weight 1]")
    weight: float = setting(0.0, ge=0.0, help="context loss weight in the segmentation stage; 0: context stage only [recipe: two stages]")
    projection_dim: int = setting(128, ge=1, help="[adapt3d; VoCo projects to 2048 with a 3-layer MLP]")
    pretrain_epochs: int = setting(2, ge=0, help="context stage length, in epochs of the training loader [recipe: context stage first; count: adapt3d]")

    def __post_init__(self) -> None:
        if self.enabled and self.pretrain_epochs == 0 and self.weight == 0:
            raise ValueError("context_head is enabled but trains nothing: set pretrain_epochs > 0 or weight > 0")


@dataclass(frozen=True)
class PseudoLabelSection:
    enabled: bool = False
    path: str = setting("", path=True, help="an nnU-Net dataset of pseudo-labels, from `adapt3d pseudolabel`")
    mode: str = setting("add", choices=("add", "replace"), help="add to the target's items, or replace them")


@dataclass(frozen=True)
class AutoSection:
    """Learned class prompts for automatic segmentation (adapt3d.auto; docs/auto.md)."""

    enabled: bool = False
    tokens_per_class: int = setting(1, ge=1, help="learned sparse prompt tokens per class, in the decoder's prompt space")
    random_crops: int = setting(1, ge=0, help="extra crops per sample placed anywhere in the volume (mostly background), class prompt only")
    weight: float = setting(1.0, gt=0.0, help="weight of the automatic rounds' loss next to the mean click-round loss")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = setting("run", help="run name: the run directory is <output_dir>/<name>")
    seed: int = 0
    output_dir: str = setting("runs", help="where runs are written (relative to the working directory)")
    core: CoreSection = setting(factory=CoreSection)
    adapter: AdapterConfig = setting(factory=AdapterConfig)
    data: DataSection = setting(factory=DataSection)
    train: TrainSection = setting(factory=TrainSection)
    eval: EvalSection = setting(factory=EvalSection)
    retention: RetentionSection = setting(factory=RetentionSection)
    context_head: ContextHeadSection = setting(factory=ContextHeadSection)
    pseudolabel: PseudoLabelSection = setting(factory=PseudoLabelSection)
    auto: AutoSection = setting(factory=AutoSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


#: top-level sections that may name a preset or a YAML file (presets: configs/<section>/<name>.yaml)
INCLUDABLE = ("core", "adapter", "data", "train", "eval", "retention", "context_head", "pseudolabel")
_SECTION_TYPES = typing.get_type_hints(ExperimentConfig)


def experiment_file(name_or_path: str | os.PathLike, cwd: Path | None = None) -> Path:
    """The YAML file of ``--config``: a path, or the name of a packaged experiment preset."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    path = path if path.is_absolute() else (cwd or Path.cwd()) / path
    if path.is_file() or is_yaml_path(text) or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path.resolve()
    return find_preset("experiment", text, CONFIGS, "--config")


def _section(name: str, value: str, base: Path, where: str) -> dict:
    """The settings of section ``name`` read from the preset or YAML file ``value`` names."""
    path = find_preset(name, value, base, where)
    values = read_yaml(path)
    return resolve_paths(_SECTION_TYPES[name], values, path.parent)


def _file_layer(path: Path) -> dict:
    values = read_yaml(path)
    for name in INCLUDABLE:
        if isinstance(values.get(name), str):
            values[name] = _section(name, values[name], path.parent, f"{path}: {name}")
    return resolve_paths(ExperimentConfig, values, path.parent)


def _override_layer(item: str, cwd: Path) -> tuple[dict, bool]:
    """One ``key=value`` as a layer, and whether it replaces its whole section."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value (e.g. adapter.rank=8)")
    key = key.strip()
    if key in INCLUDABLE and raw and not raw.lstrip().startswith("{"):
        return {key: _section(key, raw.strip(), cwd, f"override {item!r}")}, True
    try:
        layer = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
    return resolve_paths(ExperimentConfig, layer, cwd), False  # type: ignore[arg-type]


def experiment_values(path: str | os.PathLike | None, overrides: list[str] = (), *, cwd: Path | None = None) -> tuple[dict, str]:
    """The merged (not yet checked) settings of a file and overrides, and a name for messages."""
    cwd = Path(cwd or Path.cwd())
    values: dict = {}
    where = "config"
    if path is not None:
        file = experiment_file(path, cwd)
        values, where = _file_layer(file), str(file)
    problems = []
    for item in overrides:
        try:
            layer, replaces = _override_layer(item, cwd)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        values = {**values, **layer} if replaces else deep_merge(values, layer)
    if problems:
        raise ConfigError(problem_summary(where, problems))
    return values, where


def problem_summary(where: str, problems: list[str]) -> str:
    """One line per problem under a header line naming the config."""
    if len(problems) == 1:
        return problems[0] if problems[0].startswith(where) else f"{where}: {problems[0]}"
    return f"{where}: {len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems)


def load_experiment(path: str | os.PathLike | None, overrides: list[str] = (), *, cwd: Path | None = None) -> ExperimentConfig:
    """Read an experiment (file or preset name, or defaults), apply overrides, check the schema.

    Every unknown key, wrongly typed value and broken rule is reported at once in one
    :class:`ConfigError` (one line each). Data, checkpoints, classes and targets are checked by
    :func:`adapt3d.train.checks.check_experiment`.
    """
    values, where = experiment_values(path, list(overrides), cwd=cwd)
    problems = check_values(ExperimentConfig, values)
    if problems:
        raise ConfigError(problem_summary(where, problems))
    return build_dataclass(ExperimentConfig, typed_values(ExperimentConfig, values), where)


def config_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what every run saves)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg)))


def config_hash(cfg: ExperimentConfig) -> str:
    """Short hash of the resolved config."""
    return hashlib.sha256(config_yaml(cfg).encode()).hexdigest()[:16]
