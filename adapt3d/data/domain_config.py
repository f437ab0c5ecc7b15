"""The ``data.target`` / ``data.reference`` sections of an experiment (and of ``adapt3d evaluate``):
which nnU-Net raw dataset plays a domain, which classes, its declared split and caveats."""

from __future__ import annotations

from dataclasses import dataclass

from adapt3d.config import setting


@dataclass(frozen=True)
class SplitSection:
    """Items (case × class) of a split: by case id or by class name."""

    cases: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainSection:
    """A dataset in nnU-Net raw layout playing one role in the experiment."""

    path: str = setting("", path=True, help="nnU-Net v2 raw dataset folder (dataset.json, imagesTr, labelsTr)")
    name: str = setting("", help="short domain name in reports (default: the dataset folder name)")
    classes: tuple[str, ...] = setting((), help="class names of dataset.json to use (empty: every class present)")
    modality: str = setting("auto", help="auto (from dataset.json channel_names), CT, MR or US")
    simulated: bool = setting(False, help="e.g. ultrasound rendered from MRI: reports say SIMULATED")
    silver_standard: bool = setting(False, help="labels are model predictions, not manual tracings")
    val: SplitSection = setting(factory=SplitSection)
    test: SplitSection = setting(factory=SplitSection)
    test_fraction: float = setting(0.3, ge=0.0, lt=1.0, help="fraction of whole cases held out when no test split is declared")
    min_voxels: int = setting(100, ge=1, help="objects smaller than this are skipped (and listed)")
