"""The "0 clicks (auto)" entry of the N-click evaluation: automatic masks from the class prompts.

:class:`AutoMasks` is the ``auto`` argument of the N-click evaluators that take one (the
``crop`` protocol, :func:`adapt3d.evaluate.nclick.evaluate_items`; SegVol's ``zoom`` protocol,
:func:`adapt3d.evaluate.segvol_protocol.evaluate_items_segvol`): per item, the automatic label
map of its case (every class with a prompt, argmax with the background threshold, as
``adapt3d predict --auto`` writes it) restricted to the item's class, on the input grid. A case
is predicted once for all its items; classes without a prompt get no click-0 entry.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from adapt3d.auto.predict import AutoPrediction, auto_inference, predict_working
from adapt3d.auto.prompts import ClassPrompts, check_prompts_fit
from adapt3d.data.imageio import Volume
from adapt3d.data.items import Item, PreparedCase
from adapt3d.evaluate.evaluators import Evaluator
from adapt3d.infer.whole_volume import WholeVolumeConfig


class AutoMasks:
    """Automatic masks of items with the protocol's settings (``normalization``; ``zoom_in`` where
    the protocol has it); ``seconds`` lists the time per case."""

    def __init__(self, model: nn.Module, prompts: ClassPrompts, protocol, modality: str, *, overlap: float = 0.25) -> None:
        check_prompts_fit(prompts, model, "class prompts")
        self.model = model
        self.prompts = prompts
        self.modality = modality
        self.config = WholeVolumeConfig(overlap=overlap, normalization=protocol.normalization)
        self.zoom_in = bool(getattr(protocol, "zoom_in", True))
        self.inference = auto_inference(model)
        self.seconds: list[float] = []
        self._case: tuple[str, AutoPrediction] | None = None

    def record(self) -> dict:
        """What the EVAL record says of the automatic masks: the classes with a prompt (the others
        get no click-0 entry) and the seconds of each case's automatic prediction."""
        return {"classes": list(self.prompts.class_names), "seconds": [round(s, 3) for s in self.seconds]}

    def __call__(self, item: Item, case: PreparedCase | Volume) -> np.ndarray | None:
        """The automatic mask of ``item``'s class (None: no prompt for it) in ``case``, as the
        evaluator holds it: a :class:`PreparedCase` on the protocol's working grid (crop and cvpr25
        protocols; used as it is where the core's step runs on that grid, else its input image) or
        the input image (zoom protocol), prepared by the core's whole-volume step."""
        if item.class_name not in self.prompts.class_names:
            return None
        key = str(item.case.image_path)
        if self._case is None or self._case[0] != key:
            if isinstance(case, PreparedCase) and self.inference.from_case is not None:
                prepared = self.inference.from_case(case, self.modality)
            else:
                image = case.input_image if isinstance(case, PreparedCase) else case
                prepared = self.inference.prepare(self.model, image, self.modality, self.config)
            result = predict_working(self.model, self.prompts, prepared, self.config, zoom_in=self.zoom_in)
            self.seconds.append(result.seconds)
            self._case = (key, result)
        return self._case[1].mask(item.class_name)


def evaluation_prompts(adapter: str | None, evaluator: Evaluator) -> ClassPrompts:
    """The class prompts ``adapt3d evaluate --auto`` uses, checked before any data or model is read
    (``evaluator``: the run's; it must take automatic masks)."""
    from adapt3d.auto.prompts import load_class_prompts
    from adapt3d.errors import ConfigError

    if adapter is None:
        raise ConfigError("--auto needs --adapter (an adapter trained with auto.enabled: true, holding class prompts)")
    if not evaluator.automatic:
        raise ConfigError("--auto adds click count 0 to the N-click and CVPR 2025 protocols of SAM-style cores and SegVol "
                          "(not to sam2d's slice-wise protocol)")
    return load_class_prompts(adapter)
