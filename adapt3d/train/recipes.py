"""Training recipes, by the name a core's contract gives (``contract.training``): the crops a core
trains on and the prompts and loss of one training step.

``click-rounds`` (SAM-Med3D): per crop, ``train.click_rounds`` rounds, each adding a click at the
current error and feeding the previous low-res logits back (mask feedback), as SAM-Med3D trains.
``prompt-rounds`` (SegVol): as the SegVol authors train, the class name in the modality's
template as a text prompt together with spatial prompts — per round, at random, the object's box,
the clicks so far (one more at the current error each round) or the text alone — and no mask
feedback (SegVol's released mask-prompt layers were never trained). Crops keep SegVol's geometry:
the input's own spacing, (z, y, x) axes, the whole volume normalised.

Every round's prediction is scored by Dice + CE on the crop's known voxels; the step's loss is
the mean over rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adapt3d.data.items import Item
from adapt3d.prompts.device_clicks import TrainingClicks
from adapt3d.prompts.loop import ClickLoop, upsampled
from adapt3d.registry import Registry
from adapt3d.train.config import TrainSection
from adapt3d.train.data import CropDataset
from adapt3d.train.losses import dice_ce_loss


@dataclass(frozen=True)
class StepContext:
    """What a recipe's step may use beyond the batch: settings, the domain's modality, class names."""

    train: TrainSection
    modality: str
    class_names: Sequence[str]


#: (model, image embeddings, batch, rng, context, start) → mean loss over the step's rounds; ``start``:
#: low-res logits of an automatic first round (adapt3d.auto), or None.
StepLoss = Callable[[torch.nn.Module, torch.Tensor, dict, np.random.Generator, StepContext, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """A core's training: how its crops are cut (``CropDataset`` options) and its step loss."""

    step: StepLoss
    axes: tuple[int, int, int] = (0, 1, 2)  # crop axes in the core's array order (from RAS)
    normalize_volume: bool = False  # normalise the whole volume, not each crop


RECIPES: Registry[Recipe] = Registry("training recipe")


def crops_for(recipe: Recipe, items: list[Item], modality: str, *, size, spacing, normalization: str, seed: int,
              train: TrainSection) -> CropDataset:
    """The training crops of ``items`` as ``recipe`` cuts them."""
    return CropDataset(
        items, modality, size=size, target_spacing=spacing, normalization=normalization, seed=seed,
        samples_per_item=train.samples_per_item, jitter=train.jitter, augment=train.augment,
        axes=recipe.axes, normalize_volume=recipe.normalize_volume,
    )


def _clicks(batch: dict, ctx: StepContext, rng: np.random.Generator) -> TrainingClicks:
    visible = batch["known"][:, 0] > 0.5
    return TrainingClicks(ctx.train.click_simulator, (batch["label"][:, 0] > 0.5) & visible, visible, rng)


def click_rounds(model, emb: torch.Tensor, batch: dict, rng: np.random.Generator, ctx: StepContext,
                 start: torch.Tensor | None = None) -> torch.Tensor:
    """SAM-Med3D's rounds: a click at the current error each round, the previous logits fed back
    (from ``start``, an automatic round's logits, when given: the first click goes to its error)."""
    clicks, loop = _clicks(batch, ctx, rng), ClickLoop(model, emb, detach=True, start="zeros" if start is None else start)
    pred = None if start is None else upsampled(model, start.detach())[:, 0] > 0
    total = 0.0
    for _ in range(ctx.train.click_rounds):
        loop.step(*clicks.step(pred))
        full = loop.upsampled()
        total = total + dice_ce_loss(full, batch["label"], batch["known"])
        pred = full.detach()[:, 0] > 0
    return total / ctx.train.click_rounds


#: The spatial prompts of a prompt round, drawn uniformly: the box, the clicks so far, none (text alone).
SPATIAL_PROMPTS = ("box", "points", "text")


def object_boxes(label: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(B, 6) inclusive (d0, h0, w0, d1, h1, w1) boxes of each crop's object; the known region's
    box where a crop has no object."""
    out = []
    for fg, seen in zip(label[:, 0] > 0.5, known[:, 0] > 0.5):
        idx = torch.nonzero(fg if fg.any() else seen)
        if idx.numel() == 0:  # nothing known either: the whole crop
            idx = torch.tensor([[0] * fg.dim(), [n - 1 for n in fg.shape]], device=fg.device)
        out.append(torch.cat([idx.min(0).values, idx.max(0).values]).float())
    return torch.stack(out)


def prompt_rounds(model, emb: torch.Tensor, batch: dict, rng: np.random.Generator, ctx: StepContext,
                  start: torch.Tensor | None = None) -> torch.Tensor:
    """SegVol's rounds: the class name as text with, per round, the box, the clicks so far or nothing
    (no mask feedback, so an automatic round's ``start`` is not used). With learned class prompts
    (adapt3d.auto: ``batch["class_prompts"]["text"]``, (B, C)) those vectors are the text instead."""
    learned = batch.get("class_prompts", {}).get("text")
    text = learned if learned is not None else [ctx.class_names[int(i)].replace("_", " ") for i in batch["class_index"]]
    boxes = object_boxes(batch["label"], batch["known"])
    clicks, loop = _clicks(batch, ctx, rng), ClickLoop(model, emb)
    pred, total = None, 0.0
    for _ in range(ctx.train.click_rounds):
        points, labels = clicks.step(pred)
        kind = SPATIAL_PROMPTS[int(rng.integers(len(SPATIAL_PROMPTS)))]
        loop.step(points if kind == "points" else None, labels if kind == "points" else None,
                  boxes=boxes if kind == "box" else None, text=text, modality=ctx.modality)
        full = loop.upsampled()
        total = total + dice_ce_loss(full, batch["label"], batch["known"])
        pred = full.detach()[:, 0] > 0
    return total / ctx.train.click_rounds


RECIPES.register("click-rounds", Recipe(click_rounds))  # SAM-Med3D: click rounds with mask feedback
# SegVol: class-name text with a box, the clicks so far or nothing per round, no mask feedback; its crops in (z, y, x)
RECIPES.register("prompt-rounds", Recipe(prompt_rounds, axes=(2, 1, 0), normalize_volume=True))
