"""Training the class prompts with the adapter: an automatic round before the recipe's rounds.

Per training step and crop, a first round prompts the decoder with the crop's class prompt and no
click (no mask prompt either). Then the contract's training recipe (:mod:`adapt3d.train.recipes`)
runs its rounds: SAM-Med3D's click rounds take the automatic round's logits as their first mask
prompt, so clicks learn to correct an automatic result; SegVol's prompt rounds take the crop's
class vector (``batch["class_prompts"]``) as their text in place of the encoded class name, so
every round trains it. One model serves automatic and interactive use.

The object-centred training crops always hold the object, but automatic inference covers the
whole volume, where most windows hold none of it. So each sample also brings ``random_crops``
crops placed uniformly in the volume (mostly background), cut as the recipe cuts its crops (its
axes, spacing, size and normalisation), on which the class prompt alone must predict what is
there, often nothing. Each costs one more encoder pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from adapt3d.auto.prompts import ClassPrompts, save_class_prompts
from adapt3d.data.items import Item
from adapt3d.train.data import CropDataset
from adapt3d.train.losses import dice_ce_loss


def auto_round(
    model: nn.Module, prompts: ClassPrompts, emb: torch.Tensor, class_index: torch.Tensor, target: torch.Tensor, known: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (Dice + CE, ignore-masked) and low-res logits of the class prompts alone on crops' embeddings."""
    logits, _ = model.decode(emb, None, None, mask_logits=None, **prompts.decode_inputs(class_index))
    full = F.interpolate(logits.float(), size=tuple(target.shape[2:]), mode="trilinear", align_corners=False)
    return dice_ce_loss(full, target, known), logits


class AutoTraining(nn.Module):
    """The class prompts under training and how a step uses them (``AdaptModule.auto``)."""

    def __init__(self, prompts: ClassPrompts, weight: float = 1.0) -> None:
        super().__init__()
        self.prompts = prompts
        self.weight = weight

    def step(self, model: nn.Module, emb: torch.Tensor, batch: dict, logs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted automatic loss of a batch (its crops, then its random crops) and the crops'
        automatic logits (the click rounds' first mask prompt); losses are added to ``logs``, and the
        crops' class prompts as ``decode`` keywords to ``batch["class_prompts"]`` (the prompt rounds' text)."""
        index = batch["class_index"]
        batch["class_prompts"] = self.prompts.decode_inputs(index)
        loss, logits = auto_round(model, self.prompts, emb, index, batch["label"], batch["known"])
        logs["train/auto_loss"] = loss.detach()
        if "auto_image" in batch:
            n = batch["auto_image"].shape[1]
            flat = {k: batch[f"auto_{k}"].flatten(0, 1) for k in ("image", "label", "known")}
            extra, _ = auto_round(model, self.prompts, model.encode(flat["image"]), index.repeat_interleave(n),
                                  flat["label"], flat["known"])
            logs["train/auto_random_loss"] = extra.detach()
            loss = (loss + n * extra) / (1 + n)
        return self.weight * loss, logits

    def evaluator(self, model: nn.Module, protocol, modality: str):
        """The automatic masks of the N-click evaluation (its "0 clicks" entry) with these prompts."""
        from adapt3d.auto.evaluate import AutoMasks

        return AutoMasks(model, self.prompts, protocol, modality)

    def save(self, adapter_dir: Path) -> Path:
        """Write the prompts into an adapter directory (``class_prompts.safetensors``)."""
        return save_class_prompts(self.prompts, adapter_dir)


class AutoCropDataset(Dataset):
    """A :class:`CropDataset`'s samples plus ``random_crops`` crops (``auto_image``, ``auto_label``,
    ``auto_known``: (R, 1, *size)) centred uniformly in the same case's working volume and cut by
    the base dataset (:meth:`CropDataset.cut`: its axes, spacing, size, normalisation and
    augmentation), drawn from the sample's own seeded generator."""

    def __init__(self, base: CropDataset, random_crops: int = 1) -> None:
        self.base = base
        self.random_crops = random_crops

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.base[index]
        if self.random_crops == 0:
            return sample
        base = self.base
        epoch, i = divmod(int(index), len(base))
        item: Item = base.items[i % len(base.items)]
        rng = np.random.default_rng([base.seed, epoch, i, 1])  # 1: apart from the crop's own draws
        arrays = base.case_arrays(item)
        crops = [base.cut(arrays, uniform_centre(arrays[1].shape, base.shape, rng), rng) for _ in range(self.random_crops)]
        for key in ("image", "label", "known"):
            stacked = np.stack([np.asarray(c[key]) for c in crops])
            sample[f"auto_{key}"] = torch.as_tensor(np.ascontiguousarray(stacked), dtype=torch.float32)
        return sample


def uniform_centre(shape: Sequence[int], size: int | Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A window centre drawn uniformly where a window of ``size`` (a cube's side or one per axis)
    lies inside the volume (per axis; the volume's middle along an axis shorter than the window),
    as sliding windows lie."""
    sizes = np.broadcast_to(np.asarray(size, dtype=float), (len(shape),))
    lo = np.array([min(s / 2, n / 2) for n, s in zip(shape, sizes)])
    hi = np.array([max(n - s / 2, n / 2) for n, s in zip(shape, sizes)])
    return lo + rng.uniform(0, 1, size=len(shape)) * (hi - lo)


def auto_training(dataset: CropDataset, core: nn.Module, *, tokens_per_class: int, random_crops: int, weight: float,
                  seed: int) -> tuple[AutoTraining, AutoCropDataset]:
    """New class prompts for the classes of ``dataset`` (label values from its items) and the dataset with random crops."""
    values = {}
    for item in dataset.items:
        values.setdefault(item.class_name, item.class_id)
    prompts = ClassPrompts.for_core(core, dataset.class_names, [values[n] for n in dataset.class_names], tokens_per_class, seed=seed,
                                    modality=dataset.modality)
    return AutoTraining(prompts, weight), AutoCropDataset(dataset, random_crops)
