"""Training crops: cached cases, object-centred random crops, MONAI augmentation, epoch-seeded order.

Every random choice of a sample is drawn from a generator seeded by (seed, epoch, index), and
the order of an epoch from (seed, epoch): the data a step sees does not depend on worker
processes or on whether training was resumed from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd
from torch.utils.data import Dataset, Sampler

from adapt3d.data.items import Item, prepare_case
from adapt3d.data.preprocess import centred_window, normalise

class CropDataset(Dataset):
    """Object-centred crops of ``items``; index ``epoch * len(self) + i`` gives sample i of that epoch.

    A sample holds ``image``, ``label``, ``known`` (1, S, S, S) and ``class_index`` (into ``class_names``)."""

    def __init__(
        self,
        items: list[Item],
        modality: str,
        *,
        size: int,
        target_spacing: tuple[float, float, float],
        normalization: str,
        seed: int,
        samples_per_item: int = 1,
        jitter: float = 0.25,
        augment: bool = True,
    ) -> None:
        if not items:
            raise ValueError("no training items")
        self.items = items
        self.modality = modality
        self.size = size
        self.spacing = tuple(target_spacing)
        self.normalization = normalization
        self.seed = seed
        self.samples_per_item = samples_per_item
        self.jitter = jitter
        self.class_names = tuple(sorted({i.class_name for i in items}))  # a sample's class_index indexes these
        self.augment = (
            Compose(
                [
                    RandFlipd(("image", "label", "known"), prob=0.5, spatial_axis=0),
                    RandFlipd(("image", "label", "known"), prob=0.5, spatial_axis=1),
                    RandFlipd(("image", "label", "known"), prob=0.5, spatial_axis=2),
                    RandScaleIntensityd("image", factors=0.1, prob=0.5),
                    RandShiftIntensityd("image", offsets=0.1, prob=0.5),
                    RandGaussianNoised("image", prob=0.2, std=0.05),
                ]
            )
            if augment
            else None
        )

    def __len__(self) -> int:
        return len(self.items) * self.samples_per_item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(index), len(self))
        rng = np.random.default_rng([self.seed, epoch, i])
        item = self.items[i % len(self.items)]
        prepared = prepare_case(item.case, self.modality, self.spacing)
        target = prepared.label == item.class_id
        known = prepared.label != item.ignore_id if item.ignore_id is not None else np.ones_like(target)
        centre = _object_centre(target) + rng.uniform(-1, 1, size=3) * self.jitter * self.size
        window = centred_window(centre, self.size)
        sample = {
            "image": normalise(window.extract(prepared.image), self.modality, self.normalization)[None],
            "label": window.extract(target.astype(np.float32))[None],
            "known": window.extract(known.astype(np.float32))[None],
        }
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            sample = self.augment(sample)
        out = {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in sample.items()}
        return {**out, "class_index": torch.tensor(self.class_names.index(item.class_name))}


def _object_centre(mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    return (idx.min(axis=0) + idx.max(axis=0)) / 2.0


class EpochSampler(Sampler[int]):
    """Shuffles ``n`` samples with a generator seeded by (seed, epoch) and yields this rank's share
    as epoch-tagged indices (``epoch * n + i``). Under DDP each rank takes every ``world``-th sample
    (the order is padded by wrapping so that all ranks see the same number)."""

    def __init__(self, n: int, seed: int, *, rank: int = 0, world: int = 1) -> None:
        self.n = n
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        order = np.resize(order, len(self) * self.world)[self.rank :: self.world]
        return iter((self.epoch * self.n + order).tolist())
