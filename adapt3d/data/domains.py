"""Experiment domains: a dataset, its items and declared split, its modality and caveats."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adapt3d.data.domain_config import DomainSection
from adapt3d.data.items import Item, Split, SplitRule, files_hash, list_items, split_items
from adapt3d.data.nnunet import Dataset, read_dataset
from adapt3d.errors import ConfigError


@dataclass
class Domain:
    """A dataset playing a role (target or reference) in an experiment."""

    name: str
    role: str
    section: DomainSection
    dataset: Dataset
    modality: str
    split: Split
    skipped: dict[str, str]

    def record(self) -> dict:
        """The domain's entry in metrics.json (evaluations are added by the caller)."""
        return {
            "dataset": self.dataset.name,
            "path": str(self.dataset.root),
            "modality": self.modality,
            "role": self.role,
            "simulated": self.section.simulated,
            "silver_standard": self.section.silver_standard,
            "split": self.split.describe(),
            "skipped": self.skipped,
            "classes": sorted({i.class_name for s in (self.split.train, self.split.val, self.split.test) for i in s}),
            "data_hash": files_hash(self.files()),
        }

    def files(self) -> list[Path]:
        items = self.split.train + self.split.val + self.split.test
        return [p for i in items for p in (i.case.image_path, i.case.label_path) if p is not None]


def load_domain(section: DomainSection, role: str, *, seed: int, all_test: bool = False) -> Domain:
    """Read a domain's dataset, list its items and apply its declared split.

    With ``all_test`` (the CT reference set; plain evaluation) every item is a test item.
    """
    if not section.path:
        raise ConfigError(f"data.{role}.path is not set (an nnU-Net raw dataset directory)")
    ds = read_dataset(section.path)
    modality = ds.modality if section.modality == "auto" else section.modality.upper()
    items, skipped = list_items(ds, list(section.classes) or None, min_voxels=section.min_voxels)
    if not items:
        raise ConfigError(f"{ds.root}: no labelled object of at least {section.min_voxels} voxels to use as data.{role}")
    if all_test:
        split = Split(test=items)
    else:
        split = split_items(
            items,
            val=SplitRule(section.val.cases, section.val.classes),
            test=SplitRule(section.test.cases, section.test.classes),
            seed=seed,
            test_fraction=section.test_fraction,
        )
        if not split.train:
            raise ConfigError(f"{ds.root}: the declared split leaves no training items for data.{role}")
        if not split.test:
            raise ConfigError(f"{ds.root}: the declared split leaves no test items for data.{role}")
    return Domain(section.name or re.sub(r"^Dataset\d+_", "", ds.name), role, section, ds, modality, split, skipped)


def extra_items(path: str, classes: tuple[str, ...], *, min_voxels: int) -> list[Item]:
    """Training items from a pseudo-label dataset (labels may hold 255 = unknown)."""
    ds = read_dataset(path)
    items, _ = list_items(ds, list(classes) or None, min_voxels=min_voxels)
    return items
