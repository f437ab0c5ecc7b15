"""The core contract: what every verb may assume about a core, declared once on its spec.

A verb never asks which core it holds; it reads the core's contract:

- ``preprocessing``: the released model's input (window size follows the architecture, spacing or
  None for cores that work at the input's own spacing, intensity normalisation);
- ``prompts``: which prompt kinds ``decode`` takes (:data:`PROMPT_KINDS`); ``mask`` means it takes
  the previous low-res logits back (mask feedback), ``text`` a class name, ``tokens`` learned
  prompt tokens in the decoder's prompt space (``prompt_tokens=``, the class prompts of
  :mod:`adapt3d.auto`);
- ``inference`` (optional): how a whole volume is segmented from prompts (a name in
  :data:`adapt3d.infer.strategies.INFERENCE`: SAM-Med3D's windows grown from the clicks, SegVol's
  zoom-out-zoom-in, 2D SAM's slices);
- ``evaluation``: the N-click protocol that scores it (a name in
  :data:`adapt3d.evaluate.evaluators.EVALUATORS`);
- ``training`` (optional): its prompt recipe per training step (a name in
  :data:`adapt3d.train.recipes.RECIPES`).

The strategy names point into registries of the verbs' own packages, so ``adapt3d.cores`` never
imports them; a new core reuses existing strategies by name or registers its own
(see docs/cores.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapt3d.cores.preprocessing import Preprocessing

#: Prompt kinds a core's ``decode`` may take.
PROMPT_KINDS = ("points", "boxes", "mask", "text", "tokens")


@dataclass(frozen=True)
class CoreContract:
    """What a core takes and how each verb runs it (see the module docstring)."""

    preprocessing: Preprocessing
    prompts: frozenset[str]
    evaluation: str
    inference: str | None = None  # None: the core does not predict whole volumes (``predict`` refuses it)
    training: str | None = None  # None: the core cannot be adapted (``adapt`` refuses it)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.prompts) - set(PROMPT_KINDS))
        if unknown:
            raise ValueError(f"unknown prompt kinds {unknown}; valid: {', '.join(PROMPT_KINDS)}")
        if "points" not in self.prompts and "text" not in self.prompts:
            raise ValueError("a core must take points or text prompts")

    def takes(self, kind: str) -> bool:
        """Whether ``decode`` takes prompts of ``kind`` (one of :data:`PROMPT_KINDS`)."""
        return kind in self.prompts
