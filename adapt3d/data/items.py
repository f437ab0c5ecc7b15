"""Segmentation items (one case × one class), their declared split, and a cache of prepared cases."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from adapt3d.data.card import sha256_file
from adapt3d.data.imageio import Volume, data_files, load_volume
from adapt3d.data.nnunet import Case, Dataset, binary_targets, load_case
from adapt3d.data.preprocess import Grid, clamp_ct, to_working_grid
from adapt3d.errors import ConfigError


@dataclass(frozen=True)
class Item:
    """One object to segment: a class of a labelled case."""

    case: Case
    class_name: str
    class_id: int
    ignore_id: int | None = None  # label id of unknown voxels (masked out of the loss)

    @property
    def key(self) -> str:
        return f"{self.case.case_id}/{self.class_name}"


@dataclass(frozen=True)
class SplitRule:
    """Items whose case id is in ``cases`` or whose class is in ``classes`` belong to the split."""

    cases: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()

    def matches(self, item: Item) -> bool:
        return item.case.case_id in self.cases or item.class_name in self.classes

    @property
    def empty(self) -> bool:
        return not self.cases and not self.classes


@dataclass
class Split:
    """Declared train/val/test items of a dataset (recorded in every run's metrics)."""

    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)

    def describe(self) -> dict[str, list[str]]:
        return {name: [i.key for i in getattr(self, name)] for name in ("train", "val", "test")}


def list_items(ds: Dataset, classes: list[str] | None = None, *, min_voxels: int = 100) -> tuple[list[Item], dict[str, str]]:
    """Items of the labelled cases of ``ds`` (restricted to ``classes``); skipped ones with reasons."""
    if classes:
        unknown = [c for c in classes if c not in ds.classes]
        if unknown:
            raise ConfigError(
                f"{ds.root}: unknown class {unknown[0]!r}; known: {', '.join(sorted(ds.classes))}"
            )
    wanted = {c: ds.classes[c] for c in (classes or ds.classes)}
    items: list[Item] = []
    skipped: dict[str, str] = {}
    for case in ds.labelled:
        _, label = load_case(case)
        targets, why = binary_targets(label, wanted, min_voxels=min_voxels)
        items += [Item(case, name, wanted[name], ds.ignore_label) for name in targets]
        skipped.update({f"{case.case_id}/{name}": reason for name, reason in why.items()})
    return items, skipped


def split_items(items: list[Item], *, val: SplitRule, test: SplitRule, seed: int = 0, test_fraction: float = 0.3) -> Split:
    """Assign items to train/val/test by the declared rules.

    With no test rule, whole cases go to test (``test_fraction`` of them, seeded); with a single
    case, whole classes go to test instead, so no object is ever seen in training and test.
    """
    if test.empty:
        cases = sorted({i.case.case_id for i in items})
        if len(cases) > 1:
            rng = random.Random(seed)
            n = max(1, round(test_fraction * len(cases)))
            test = SplitRule(cases=tuple(sorted(rng.sample(cases, n))))
        else:
            names = sorted({i.class_name for i in items})
            n = max(1, round(test_fraction * len(names))) if len(names) > 1 else 0
            test = SplitRule(classes=tuple(sorted(random.Random(seed).sample(names, n))))
    split = Split()
    for item in items:
        if test.matches(item):
            split.test.append(item)
        elif val.matches(item):
            split.val.append(item)
        else:
            split.train.append(item)
    return split


@dataclass
class PreparedCase:
    """A case on the core's working grid (RAS, target spacing), CT clamped, plus the input label."""

    image: np.ndarray  # float32, working grid
    label: np.ndarray  # int, working grid (nearest)
    grid: Grid
    input_label: np.ndarray  # int, input grid (for metrics on the original voxels)
    input_spacing: tuple[float, float, float]
    input_image: Volume


@lru_cache(maxsize=64)
def prepare_image(case: Case, modality: str, target_spacing: tuple[float, float, float]) -> tuple[np.ndarray, Grid, Volume]:
    """A case's image on the working grid (CT clamped), cached in memory: epochs do not re-read NIfTI."""
    image = load_volume(case.image_path, kind="image")
    clamped = Volume(clamp_ct(image.array, modality), image.affine, image.header, image.path)
    work, grid = to_working_grid(clamped, target_spacing)
    return work.astype(np.float32), grid, image


@lru_cache(maxsize=64)
def prepare_case(case: Case, modality: str, target_spacing: tuple[float, float, float]) -> PreparedCase:
    """A labelled case on the working grid with its label (nearest), cached like ``prepare_image``."""
    if case.label_path is None:
        raise ConfigError(f"{case.image_path}: case has no label map")
    work, grid, image = prepare_image(case, modality, target_spacing)
    label = load_volume(case.label_path, kind="label")
    work_label, _ = to_working_grid(label, target_spacing, order=0)
    return PreparedCase(work, work_label, grid, label.array, image.spacing, image)


def files_hash(paths: list[Path]) -> str:
    """Short hash over the contents of ``paths`` (the data files a run used), for provenance."""
    h = hashlib.sha256()
    for path in sorted({Path(q).resolve() for p in paths for q in (p, *data_files(p))}):
        h.update(path.name.encode())
        h.update(sha256_file(path).encode())
    return h.hexdigest()[:16]
