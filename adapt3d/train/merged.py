"""CT retention of what a colleague receives: the merged export, evaluated as a plain core."""

from __future__ import annotations

from torch import nn

from adapt3d.cores import CORES
from adapt3d.data.domains import Domain
from adapt3d.evaluate.evaluators import evaluate_model
from adapt3d.evaluate.nclick import Protocol
from adapt3d.train.retention import mean_dice
from adapt3d.tuners import AdaptedModel, merged_state


def merged_core(model: AdaptedModel, name: str | None = None) -> tuple[nn.Module, bool]:
    """A plain core holding the weights ``export_merged`` writes (adapter ``name`` folded in), and
    True; for a method that cannot merge (bottleneck adapters: the export is core + adapter) the
    adapted model itself, and False."""
    if not model.tuner.mergeable:
        return model, False
    name = name or model.active or next(iter(model.configs))
    core = CORES.get(model.core_name).model_cls(model.config)
    core.load_state_dict(merged_state(model, name), strict=True)
    device = next(model.parameters()).device
    return core.to(device).eval().requires_grad_(False), True


def merged_retention(model: AdaptedModel, reference: Domain, protocol: Protocol, frozen_record: dict, clicks: int) -> dict:
    """``retention.merged`` of the run record: the merged weights' CT Dice per click count and its
    ratio to the frozen core's (same items, prompts and seeds)."""
    core, mergeable = merged_core(model)
    record = evaluate_model(core, reference.split.test, reference.modality, protocol, desc=f"merged: {reference.name}")
    dice = {str(k): mean_dice(record, k) for k in protocol.clicks}
    frozen = {str(k): mean_dice(frozen_record, k) for k in protocol.clicks}
    per_click = {k: (dice[k] / frozen[k] if frozen[k] else float("nan")) for k in dice}
    return {
        "mergeable": mergeable,
        "evaluated": "merged official-format weights in a plain core" if mergeable
        else "core + adapter (this method cannot merge; its export is core + adapter weights)",
        "clicks": clicks, "final": per_click[str(clicks)], "per_click": per_click, "dice": dice, "summary": record["summary"],
    }
