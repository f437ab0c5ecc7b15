"""The interactive N-click protocol: first click inside the object, then at the largest error.

For each item (case × class): the first click is simulated on the whole object (working grid);
a crop of the core's input size is centred on it and encoded once; each further click is
simulated from the current prediction's errors inside the crop, and the previous low-res logits
are fed back as the mask prompt. At each requested click count the prediction is mapped back to
the input grid and scored there (Dice, NSD in mm), so metrics are on the original voxels.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from adapt3d.data.imageio import Volume, ending_of, save_volume
from adapt3d.data.items import Item, PreparedCase, prepare_case
from adapt3d.data.preprocess import centred_window, from_working_grid, normalise
from adapt3d.evaluate.metrics import dice, nsd, summarise
from adapt3d.prompts.clicks import CLICK_SIMULATORS, Click
from adapt3d.prompts.loop import ClickLoop


@dataclass(frozen=True)
class Protocol:
    """Settings of an N-click evaluation; the same protocol and seed give the same prompts."""

    clicks: tuple[int, ...] = (1, 3, 5, 10)
    simulator: str = "center"
    nsd_tolerance_mm: float = 2.0
    seed: int = 0
    target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    normalization: str = "sam-med3d"


#: What a protocol gives for one item: input-grid masks per click count, the input-grid ground
#: truth, the input image (spacing, affine), and extra fields for the item's record.
CaseResult = tuple[dict[int, np.ndarray], np.ndarray, Volume, dict]


def _item_rng(seed: int, item: Item) -> np.random.Generator:
    return np.random.default_rng([seed, *item.key.encode()])


@torch.no_grad()
def segment_item(
    model: nn.Module, prepared: PreparedCase, item: Item, modality: str, protocol: Protocol
) -> dict[int, np.ndarray]:
    """Input-grid boolean masks after each requested number of clicks."""
    simulate = CLICK_SIMULATORS.get(protocol.simulator)
    rng = _item_rng(protocol.seed, item)
    size = model.image_size
    gt_work = prepared.label == item.class_id
    first = simulate(None, gt_work, rng=rng)
    window = centred_window(np.asarray(first.position, dtype=float), size)
    gt_crop = window.extract(gt_work.astype(np.uint8)).astype(bool)
    crop = normalise(window.extract(prepared.image), modality, protocol.normalization)
    device = next(model.parameters()).device
    loop = ClickLoop(model, model.encode(torch.from_numpy(crop)[None, None].to(device)))
    clicks: list[Click] = [Click(tuple(int(p) - s for p, s in zip(first.position, window.start)), True)]
    pred_crop = np.zeros_like(gt_crop)
    out: dict[int, np.ndarray] = {}
    for k in range(1, max(protocol.clicks) + 1):
        if k > 1:
            nxt = simulate(pred_crop, gt_crop, rng=rng)
            if nxt is not None:
                clicks.append(nxt)
        pts = torch.tensor([[list(c.position) for c in clicks]], dtype=torch.float32, device=device)
        labels = torch.tensor([[c.label for c in clicks]], dtype=torch.int64, device=device)
        loop.step(pts, labels)
        prob_crop = torch.sigmoid(loop.upsampled())[0, 0].cpu().numpy()
        pred_crop = prob_crop > 0.5
        if k in protocol.clicks:
            work = window.paste(prob_crop, prepared.label.shape)
            out[k] = from_working_grid(work, prepared.grid, order=1) > 0.5
    return out


def evaluate_items(
    model: nn.Module,
    items: Sequence[Item],
    modality: str,
    protocol: Protocol,
    *,
    predictions_dir: Path | None = None,
    run_dir: Path | None = None,
    desc: str | None = None,
    auto: Callable[[Item, PreparedCase], np.ndarray | None] | None = None,
) -> dict:
    """Run the protocol on ``items``; the EVAL record of the run schema (summary, per class, per case).

    ``auto`` (adapt3d.auto.evaluate.AutoMasks) adds click count 0: an item's input-grid automatic
    mask, or None for a class it has no prompt for; the record's ``automatic.classes`` are the
    classes with a prompt."""

    def segment(item: Item) -> CaseResult:
        prepared = prepare_case(item.case, modality, tuple(protocol.target_spacing))
        masks = segment_item(model, prepared, item, modality, protocol)
        automatic = None if auto is None else auto(item, prepared)
        masks = masks if automatic is None else {0: automatic, **masks}
        return masks, prepared.input_label == item.class_id, prepared.input_image, {}

    scored = protocol if auto is None else dataclasses.replace(protocol, clicks=(0, *protocol.clicks))
    record = evaluate_each(
        model, items, segment, scored, desc=desc or "evaluate", predictions_dir=predictions_dir, run_dir=run_dir
    )
    if auto is not None:
        record["automatic"] = auto.record()  # the classes with a class prompt, seconds per case
    return record


def evaluate_each(
    model: nn.Module,
    items: Sequence[Item],
    segment: Callable[[Item], CaseResult],
    protocol: Protocol,
    *,
    desc: str,
    predictions_dir: Path | None = None,
    run_dir: Path | None = None,
) -> dict:
    """The EVAL record of ``items``, each segmented by ``segment`` and scored by :func:`case_record`
    at ``protocol.clicks``; the model runs in eval mode, its mode restored after."""
    per_case = []
    with eval_mode(model):
        for item in tqdm(items, desc=desc, disable=None, leave=False):
            masks, gt, image, extra = segment(item)
            record = case_record(
                item, masks, gt, image, protocol.nsd_tolerance_mm, predictions_dir=predictions_dir, run_dir=run_dir
            )
            record.update(extra)
            per_case.append(record)
    return summarise_records(per_case, protocol.clicks)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode; its mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def case_record(
    item: Item,
    masks: dict[int, np.ndarray],
    gt: np.ndarray,
    image: Volume,
    tolerance_mm: float,
    *,
    predictions_dir: Path | None = None,
    run_dir: Path | None = None,
) -> dict:
    """The per-case entry of an EVAL record: Dice/NSD per click count; the last mask saved if asked."""
    record = {
        "case": item.case.case_id,
        "class": item.class_name,
        "label_id": item.class_id,
        "image": str(Path(item.case.image_path).resolve()),
        "label": str(Path(item.case.label_path).resolve()),
        "dice": {str(k): dice(m, gt) for k, m in masks.items()},
        "nsd": {str(k): nsd(m, gt, image.spacing, tolerance_mm) for k, m in masks.items()},
        "prediction": None,
    }
    if predictions_dir is not None:
        k = max(masks)
        ending = ending_of(item.case.image_path) or ".nii.gz"  # written in the input's format
        path = predictions_dir / f"{item.case.case_id}__{item.class_name}__{k}{ending}"
        save_volume(masks[k].astype(np.uint8), image.affine, path, reference=image)
        record["prediction"] = str(path.relative_to(run_dir)) if run_dir else str(path)
    return record


def summarise_records(per_case: list[dict], clicks: Sequence[int]) -> dict:
    """Mean ± sd over items, overall and per class, at each click count."""
    def block(records: list[dict]) -> dict:
        return {
            str(k): {m: summarise(r[m][str(k)] for r in records if str(k) in r[m]) for m in ("dice", "nsd")} for k in clicks
        }

    classes = sorted({r["class"] for r in per_case})
    return {
        "clicks": list(clicks),
        "summary": block(per_case),
        "per_class": {c: block([r for r in per_case if r["class"] == c]) for c in classes},
        "per_case": per_case,
    }
