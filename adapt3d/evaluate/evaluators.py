"""The N-click evaluators, by the name a core's contract gives (``contract.evaluation``).

``crop``: SAM-Med3D's protocol (one crop centred on the first click, mask feedback);
``zoom``: SegVol's (a fresh zoom-out-zoom-in per click count; with ``text`` also 0 clicks = the
class name alone); ``slicewise``: 2D SAM on every slice of the object. A new core names one of
these in its contract or registers its own here. ``crop`` and ``zoom`` also take the automatic
masks of learned class prompts (``auto=``, :mod:`adapt3d.auto`) as click count 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from adapt3d.cores import CORES, core_spec
from adapt3d.data.items import Item
from adapt3d.evaluate.nclick import Protocol, evaluate_items
from adapt3d.evaluate.segvol_protocol import SegVolProtocol, evaluate_items_segvol
from adapt3d.evaluate.slicewise import SlicewiseProtocol, evaluate_slicewise
from adapt3d.registry import Registry


@dataclass(frozen=True)
class Evaluator:
    """A protocol's settings class and the function returning its EVAL record (``automatic``: it
    takes ``auto=``, the automatic masks of class prompts, as click count 0)."""

    protocol: type[Protocol]
    evaluate: Callable[..., dict]
    automatic: bool = False


EVALUATORS: Registry[Evaluator] = Registry("evaluator")
EVALUATORS.register("crop", Evaluator(Protocol, evaluate_items, automatic=True))
EVALUATORS.register("zoom", Evaluator(SegVolProtocol, evaluate_items_segvol, automatic=True))
EVALUATORS.register("slicewise", Evaluator(SlicewiseProtocol, evaluate_slicewise))


def core_evaluator(core_type: str) -> Evaluator:
    """The N-click evaluator of core ``core_type`` (from its contract)."""
    return EVALUATORS.get(CORES.get(core_type).contract.evaluation)


def evaluate_model(model: nn.Module, items: Sequence[Item], modality: str, protocol: Protocol, **options: Any) -> dict:
    """The EVAL record of ``items`` by the N-click evaluator of ``model``'s contract; ``options`` are
    the evaluators' keywords (``predictions_dir``, ``run_dir``, ``desc``; ``auto``: the automatic
    masks of learned class prompts, :mod:`adapt3d.auto`, passed only when given)."""
    if options.get("auto", True) is None:
        options.pop("auto")
    return EVALUATORS.get(core_spec(model).contract.evaluation).evaluate(model, items, modality, protocol, **options)
