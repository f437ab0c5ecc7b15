"""Automatic segmentation in ``adapt3d serve``: a class prompt's mask as the session's starting result.

An adapter trained with ``auto.enabled: true`` holds class prompts (``class_prompts.safetensors``,
:mod:`adapt3d.auto`); ``--class-prompts FILE`` gives them to the core itself (a merged export). A
client posts ``{"class": NAME}`` to :data:`AUTO_PATH` (an adapt3d extension of the nnInteractive
protocol, announced in ``/capabilities`` under ``automatic``): the automatic mask of that class
becomes the current result (undoable; earlier clicks are dropped), and the clicks that follow
refine it, the automatic logits being their starting mask prompt (:mod:`adapt3d.auto.refine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from adapt3d.auto.prompts import (
    PROMPTS_FILE,
    ClassPrompts,
    check_prompts_fit,
    load_class_prompts,
)

#: The endpoint of automatic segmentation (POST, JSON ``{"class": NAME}``, lease required).
AUTO_PATH = "/adapt3d/auto_segment"
NOTE = (f"POST {AUTO_PATH} with {{\"class\": NAME}} (adapt3d extension): the class prompt's automatic mask becomes the "
        "current result, and the clicks that follow refine it from its logits; classes per adapter under 'classes'")


@dataclass(frozen=True)
class AutoStart:
    """A session's automatic starting point: the class and its automatic logits on the working grid."""

    class_name: str
    prior: np.ndarray  # float32 logits, the session's working grid


def served_prompts(
    model: nn.Module, adapters: Sequence[tuple[str, Path]], core_prompts: str | Path | None
) -> dict[str | None, ClassPrompts]:
    """Class prompts by adapter name (None: the core without adapter, from ``core_prompts``): those
    adapters' ``class_prompts.safetensors`` where present; each checked against the core."""
    found: dict[str | None, ClassPrompts] = {}
    sources = [(name, directory) for name, directory in adapters if (Path(directory) / PROMPTS_FILE).is_file()]
    if core_prompts is not None:
        sources.append((None, Path(core_prompts)))
    for name, source in sources:
        prompts = load_class_prompts(source)
        check_prompts_fit(prompts, model, str(source))
        found[name] = prompts
    return found


def capabilities(prompts: dict[str | None, ClassPrompts]) -> dict:
    """The ``automatic`` entry of ``/capabilities``: the endpoint and the classes of each adapter."""
    return {"endpoint": AUTO_PATH, "classes": {name or "none": list(p.class_names) for name, p in prompts.items()}}
