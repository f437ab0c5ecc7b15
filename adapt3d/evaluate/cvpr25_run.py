"""``adapt3d evaluate --protocol cvpr25``: the challenge's loop on an nnU-Net dataset, as an EVAL record.

Each labelled case is turned into the challenge's representation in memory (as ``adapt3d
convert --to npz`` writes it: LPS, (z, y, x), 0–255, the evaluated classes renumbered 1..N, the
challenge's boxes), then the 6-step loop of :mod:`adapt3d.evaluate.cvpr25` runs with the
:class:`~adapt3d.evaluate.cvpr25_predict.NpzPredictor` that ``adapt3d predict-npz`` uses.

The EVAL record follows the run schema, with ``clicks`` = the steps 1..6 (1: the box, k: the box
and k − 1 clicks):

* ``summary[step]``: Dice/NSD over *images* (each the mean over its classes, as the challenge
  scores), plus ``time_s``; ``challenge``: DSC_AUC, NSD_AUC, DSC_Final, NSD_Final, the total time
  per image and per class, over images; ``images``: the per-image fields of the script's CSV;
* ``per_class`` / ``per_case``: per case × class, the class's Dice/NSD inside the multi-class
  prediction at each step, its clicks, and its final mask (NIfTI on the input grid);
* ``prompt_strategy``: how the model used the box (see ``cvpr25_predict``);
* with ``auto`` (learned class prompts, :mod:`adapt3d.auto`): step ``0`` is each class's automatic
  mask (no box, no click; classes without a prompt have none), scored on the input grid like the
  N-click protocol's click 0, the image's value the mean over its classes with a prompt; the AUC
  and final figures stay those of the challenge's 6 steps; ``automatic.classes`` names the classes
  with a prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn
from tqdm import tqdm

from adapt3d.data.cvpr_npz import case_to_challenge, challenge_boxes, challenge_name, from_challenge_axes
from adapt3d.data.items import Item, PreparedCase, prepare_case
from adapt3d.data.imageio import save_volume
from adapt3d.data.nnunet import load_case
from adapt3d.errors import ConfigError
from adapt3d.evaluate.cvpr25 import N_CLICKS, run_case
from adapt3d.evaluate.cvpr25_predict import NpzPredictor
from adapt3d.evaluate.metrics import dice, nsd, summarise
from adapt3d.evaluate.nclick import Protocol, eval_mode


@dataclass(frozen=True)
class Cvpr25Protocol(Protocol):
    """The challenge's protocol: a box, then ``n_clicks`` refinement clicks (``clicks`` = the steps)."""

    NAME: ClassVar[str] = "cvpr25"
    n_clicks: int = N_CLICKS
    box_prompt: bool = True  # False: the challenge's no-box cases (step 1 skipped, scored 0)
    box_widening: bool = True  # the 0–5 voxel per 256 widening of the 2D box, seeded per case
    strategy: str = ""  # prompt strategy (default: the core's own; "box-fill" for the baseline)
    ct_window: tuple[float, float] = (40.0, 400.0)  # level, width (HU) → 0–255, as the converter

    def __post_init__(self) -> None:
        if self.n_clicks < 2:
            raise ConfigError(f"cvpr25 protocol: n_clicks must be ≥ 2 (the AUC is over the clicks), got {self.n_clicks}")
        object.__setattr__(self, "clicks", tuple(range(1, self.n_clicks + 2)))


def evaluate_items_cvpr25(
    model: nn.Module | None,
    items: Sequence[Item],
    modality: str,
    protocol: Protocol,
    *,
    predictions_dir: Path | None = None,
    run_dir: Path | None = None,
    desc: str | None = None,
    auto: Callable[[Item, PreparedCase], np.ndarray | None] | None = None,
) -> dict:
    """Run the challenge's loop on the cases of ``items`` (their classes together); the EVAL record
    (with ``auto``, adapt3d.auto.evaluate.AutoMasks: step 0, the automatic masks)."""
    if not isinstance(protocol, Cvpr25Protocol):
        raise ConfigError("evaluate_items_cvpr25 needs a Cvpr25Protocol")
    predictor = NpzPredictor(model, strategy=protocol.strategy or None, target_spacing=tuple(protocol.target_spacing),
                             normalization=protocol.normalization)
    by_case: dict[str, list[Item]] = {}
    for item in items:
        by_case.setdefault(item.case.case_id, []).append(item)
    images, per_case = [], []
    mode = eval_mode(model) if model is not None else contextlib.nullcontext()
    with mode:
        for case_items in tqdm(by_case.values(), desc=desc or "evaluate (cvpr25)", disable=None, leave=False):
            image_rec, class_recs = _evaluate_case(predictor, case_items, modality, protocol, predictions_dir, run_dir)
            if auto is not None:
                _add_automatic(auto, case_items, modality, protocol, image_rec, class_recs)
            images.append(image_rec)
            per_case += class_recs
    record = _record(images, per_case, protocol, predictor.description)
    if auto is not None:
        record["automatic"] = auto.record()
    return record


def _add_automatic(auto: Callable[[Item, PreparedCase], np.ndarray | None], items: list[Item], modality: str,
                   protocol: Cvpr25Protocol, image_rec: dict, class_recs: list[dict]) -> None:
    """Step 0 of one case: each class's automatic mask scored on the input grid (classes with a prompt)."""
    prepared = prepare_case(items[0].case, modality, tuple(protocol.target_spacing))
    scores = []
    for item, rec in zip(items, class_recs):
        mask = auto(item, prepared)
        if mask is None:
            continue
        gt = prepared.input_label == item.class_id
        rec["dice"]["0"] = dice(mask, gt)
        rec["nsd"]["0"] = nsd(mask, gt, prepared.input_image.spacing, protocol.nsd_tolerance_mm)
        scores.append((rec["dice"]["0"], rec["nsd"]["0"]))
    if scores:
        image_rec["dice"]["0"], image_rec["nsd"]["0"] = (float(np.mean(v)) for v in zip(*scores))


def _evaluate_case(predictor: NpzPredictor, items: list[Item], modality: str, protocol: Cvpr25Protocol,
                   predictions_dir: Path | None, run_dir: Path | None) -> tuple[dict, list[dict]]:
    c = items[0].case
    image, label = load_case(c)
    name = challenge_name(modality, c.image_path.parent.parent.name, c.case_id)
    case, _ = case_to_challenge(image, label, modality, name, seed=protocol.seed, ct_window=tuple(protocol.ct_window),
                                class_ids=[i.class_id for i in items])
    if not protocol.box_widening:
        case.boxes = challenge_boxes(case.gts)
    run = run_case(case.imgs, case.spacing, case.gts, case.boxes if protocol.box_prompt else None,
                   lambda inputs: predictor(inputs, modality), n_clicks=protocol.n_clicks, tolerance_mm=protocol.nsd_tolerance_mm)
    steps = [str(k) for k in protocol.clicks]
    image_rec = {"case": c.case_id, "npz_name": name, "classes": [i.class_name for i in items], **run.summary(protocol.n_clicks),
                 "dice": dict(zip(steps, run.dsc)), "nsd": dict(zip(steps, run.nsd)), "time_s": dict(zip(steps, run.seconds))}
    class_recs = []
    for j, item in enumerate(items):
        rec = {"case": c.case_id, "class": item.class_name, "label_id": item.class_id,
               "image": str(Path(c.image_path).resolve()), "label": str(Path(c.label_path).resolve()),
               "dice": {s: run.class_dsc[k][j] for k, s in enumerate(steps)},
               "nsd": {s: run.class_nsd[k][j] for k, s in enumerate(steps)},
               "clicks": run.clicks[j], "clicks_order": run.clicks_order[j], "prediction": None}
        if predictions_dir is not None and run.segs:
            mask, affine = from_challenge_axes((run.segs[-1] == j + 1).astype(np.uint8), image.affine, case.spacing)
            path = predictions_dir / f"{c.case_id}__{item.class_name}__cvpr25.nii.gz"
            save_volume(mask, affine, path, reference=image)
            rec["prediction"] = str(path.relative_to(run_dir)) if run_dir else str(path)
        class_recs.append(rec)
    return image_rec, class_recs


def _record(images: list[dict], per_case: list[dict], protocol: Cvpr25Protocol, strategy: str) -> dict:
    steps = [str(k) for k in protocol.clicks]
    summary = {s: {"dice": summarise(i["dice"][s] for i in images), "nsd": summarise(i["nsd"][s] for i in images),
                   "time_s": summarise(i["time_s"][s] for i in images)} for s in steps}
    if any("0" in i["dice"] for i in images):  # automatic masks (adapt3d.auto)
        steps = ["0", *steps]
        summary["0"] = {m: summarise(i[m]["0"] for i in images if "0" in i[m]) for m in ("dice", "nsd")}
    challenge = {key: summarise(i[key] for i in images) for key in ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final", "TotalRunningTime")}
    challenge["time_per_class_s"] = summarise(i["TotalRunningTime"] / len(i["classes"]) for i in images)
    classes = sorted({r["class"] for r in per_case})
    per_class = {cls: {s: {m: summarise(r[m][s] for r in per_case if r["class"] == cls and s in r[m]) for m in ("dice", "nsd")}
                       for s in steps} for cls in classes}
    return {"protocol": "cvpr25", "clicks": [int(s) for s in steps], "prompt_strategy": strategy,
            "box_prompt": protocol.box_prompt, "summary": summary, "challenge": challenge, "images": images,
            "per_class": per_class, "per_case": per_case}
