"""The N-click protocol for SegVol: zoom-out-zoom-in with the clicks so far (and the class name).

SegVol's released mask-prompt layers were never trained, so no previous mask is fed back: each
click count is a fresh zoom-out-zoom-in pass with all clicks so far. Clicks are simulated on the
input grid (first inside the object, then at the largest error, as for SAM-Med3D). With ``text``
the class name from dataset.json is also given as a text prompt, and click count 0 — the text
alone, SegVol's automatic mode — is reported too.

Click count 0 is one automatic mask: given ``auto`` (the learned class prompts of an adapter,
:class:`adapt3d.auto.evaluate.AutoMasks`), it is the class vector alone and replaces the text
alone (the clicks keep ``text``); the EVAL record's ``zero_clicks`` says which it is (``auto`` or
``text``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adapt3d.data.imageio import Volume
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
    for k in range(1, max(protocol.clicks, default=0) + 1):
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
    auto: Callable[[Item, Volume], np.ndarray | None] | None = None,
) -> dict:
    """The EVAL record (as :func:`adapt3d.evaluate.nclick.evaluate_items`) for a SegVol model.

    ``auto`` (adapt3d.auto.evaluate.AutoMasks) makes click count 0 an item's automatic mask from
    its input image (None for a class it has no prompt for) in place of the text alone."""
    text = bool(getattr(protocol, "text", False)) if text is None else text
    if getattr(protocol, "tokenizer", ""):
        getattr(model, "core", model).set_tokenizer(protocol.tokenizer)
    zero = "auto" if auto is not None else "text" if text else None
    scored = dataclasses.replace(protocol, clicks=tuple(sorted(set(protocol.clicks) | ({0} if zero else set()))))
    clicked = dataclasses.replace(scored, clicks=tuple(k for k in scored.clicks if k > 0 or zero == "text"))

    def segment(item: Item) -> CaseResult:
        masks = segment_item_segvol(model, item, modality, clicked, text=text)
        image, label = load_case(item.case)
        automatic = None if auto is None else auto(item, image)
        masks = masks if automatic is None else {0: automatic, **masks}
        return masks, label.array == item.class_id, image, {}

    record = evaluate_each(
        model, items, segment, scored, desc=desc or "evaluate (segvol)", predictions_dir=predictions_dir,
        run_dir=run_dir,
    )
    return record if zero is None else {**record, "zero_clicks": zero}
