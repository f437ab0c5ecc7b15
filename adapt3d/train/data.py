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

    Crops are cut from the case on the working grid (RAS at ``target_spacing``, None: the input's
    own spacing) with its axes in ``axes`` order (the core's array order, e.g. SegVol's (z, y, x)),
    ``size`` a cube's side or (D, H, W). ``normalize_volume`` normalises the whole volume before
    cropping (SegVol's normalisation is a volume's) instead of each crop (SAM-Med3D's). A sample
    holds ``image``, ``label``, ``known`` (1, *size) and ``class_index`` into ``class_names``.
    """

    def __init__(
        self,
        items: list[Item],
        modality: str,
        *,
        size: int | tuple[int, int, int],
        target_spacing: tuple[float, float, float] | None,
        normalization: str,
        seed: int,
        samples_per_item: int = 1,
        jitter: float = 0.25,
        augment: bool = True,
        axes: tuple[int, int, int] = (0, 1, 2),
        normalize_volume: bool = False,
    ) -> None:
        if not items:
            raise ValueError("no training items")
        self.items = items
        self.modality = modality
        self.size = size
        self.shape = np.array(tuple(size) if isinstance(size, (tuple, list)) else (size,) * 3)
        self.spacing = None if target_spacing is None else tuple(target_spacing)
        self.axes = tuple(axes)
        self.normalize_volume = normalize_volume
        self._normalised: dict[str, np.ndarray] = {}  # per case, with normalize_volume
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

    def _image(self, item: Item, working: np.ndarray) -> np.ndarray:
        """The case's working image in ``axes`` order, normalised once per case if ``normalize_volume``."""
        if not self.normalize_volume:
            return working.transpose(self.axes)
        key = str(item.case.image_path)
        if key not in self._normalised:
            self._normalised[key] = normalise(working.transpose(self.axes), self.modality, self.normalization)
        return self._normalised[key]

    def __len__(self) -> int:
        return len(self.items) * self.samples_per_item

    def case_arrays(self, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The case of ``item`` as crops are cut from it, in ``axes`` order: the working image
        (normalised if ``normalize_volume``), the item's target and its known voxels."""
        prepared = prepare_case(item.case, self.modality, self.spacing)
        image, labels = self._image(item, prepared.image), prepared.label.transpose(self.axes)
        target = labels == item.class_id
        known = labels != item.ignore_id if item.ignore_id is not None else np.ones_like(target)
        return image, target, known

    def cut(self, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], centre: np.ndarray,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The crop of ``size`` centred at ``centre`` of :meth:`case_arrays`' ``arrays``: ``image``
        (normalised unless the volume is), ``label``, ``known`` (1, *size), augmented from ``rng``."""
        image, target, known = arrays
        window = centred_window(centre, self.size)
        crop = window.extract(image)
        sample = {
            "image": (crop if self.normalize_volume else normalise(crop, self.modality, self.normalization))[None],
            "label": window.extract(target.astype(np.float32))[None],
            "known": window.extract(known.astype(np.float32))[None],
        }
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            sample = self.augment(sample)
        return sample

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(index), len(self))
        rng = np.random.default_rng([self.seed, epoch, i])
        item = self.items[i % len(self.items)]
        arrays = self.case_arrays(item)
        centre = _object_centre(arrays[1]) + rng.uniform(-1, 1, size=3) * self.jitter * self.shape
        sample = self.cut(arrays, centre, rng)
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
