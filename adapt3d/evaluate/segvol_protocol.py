"""The N-click protocol for SegVol: zoom-out-zoom-in with the clicks so far (and the class name).

SegVol's released mask-prompt layers were never trained, so no previous mask is fed back: each
click count is a fresh zoom-out-zoom-in pass with all clicks so far. Clicks are simulated on the
input grid (first inside the object, then at the largest error, as for SAM-Med3D). With ``text``
the class name from dataset.json is also given as a text prompt, and click count 0 — the text
alone, SegVol's automatic mode — is reported too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adapt3d.data.items import Item
from adapt3d.data.nnunet import load_case
from adapt3d.evaluate.nclick import CaseResult, Protocol, evaluate_each
from adapt3d.prompts.clicks import CLICK_SIMULATORS, Click


@dataclass(frozen=True)
class SegVolProtocol(Protocol):
    """The N-click protocol with SegVol's own options."""

    text: bool = False  # also prompt with the class name (adds click count 0: the text alone)
    tokenizer: str = ""  # CLIP tokenizer folder for text prompts ("": the default CLIP tokenizer)
    zoom_in: bool = True  # false: the zoom-out pass alone (fast, coarse)


@torch.no_grad()
def segment_item_segvol(model: nn.Module, item: Item, modality: str, protocol: Protocol, *, text: bool) -> dict[int, np.ndarray]:
    """Input-grid masks after each requested click count (0 = text only, when ``text``)."""
    from adapt3d.cores.segvol.zoom import segment_volume

    image, label = load_case(item.case)
    gt = label.array == item.class_id
    simulate = CLICK_SIMULATORS.get(protocol.simulator)
    rng = np.random.default_rng([protocol.seed, *item.key.encode()])
    name = item.class_name.replace("_", " ") if text else None
    zoom_in = bool(getattr(protocol, "zoom_in", True))
    out: dict[int, np.ndarray] = {}
    if text and 0 in protocol.clicks:
        logits, _ = segment_volume(model, image, text=name, modality=modality, zoom_in=zoom_in)
        out[0] = logits > 0
    clicks: list[Click] = []
    pred = None
    for k in range(1, max(protocol.clicks) + 1):
        click = simulate(pred, gt, rng=rng, spacing=image.spacing)
        if click is not None:
            clicks.append(click)
        logits, _ = segment_volume(
            model, image, text=name, points_ijk=[c.position for c in clicks], labels=[c.label for c in clicks], modality=modality,
            zoom_in=zoom_in,
        )
        pred = logits > 0
        if k in protocol.clicks:
            out[k] = pred
    return out


def evaluate_items_segvol(
    model: nn.Module,
    items: Sequence[Item],
    modality: str,
    protocol: Protocol,
    *,
    text: bool | None = None,
    predictions_dir: Path | None = None,
    run_dir: Path | None = None,
    desc: str | None = None,
) -> dict:
    """The EVAL record (as :func:`adapt3d.evaluate.nclick.evaluate_items`) for a SegVol model."""
    text = bool(getattr(protocol, "text", False)) if text is None else text
    if getattr(protocol, "tokenizer", ""):
        getattr(model, "core", model).set_tokenizer(protocol.tokenizer)
    clicks = tuple(sorted(set(protocol.clicks) | ({0} if text else set())))
    protocol = dataclasses.replace(protocol, clicks=clicks)

    def segment(item: Item) -> CaseResult:
        masks = segment_item_segvol(model, item, modality, protocol, text=text)
        image, label = load_case(item.case)
        return masks, label.array == item.class_id, image, {}

    return evaluate_each(
        model, items, segment, protocol, desc=desc or "evaluate (segvol)", predictions_dir=predictions_dir,
        run_dir=run_dir,
    )
