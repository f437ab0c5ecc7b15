"""The "0 clicks (auto)" entry of the N-click evaluation: automatic masks from the class prompts.

:class:`AutoMasks` is the ``auto`` argument of :func:`adapt3d.evaluate.nclick.evaluate_items`:
per item, the automatic label map of its case (every class with a prompt, argmax with the
background threshold, as ``adapt3d predict --auto`` writes it) restricted to the item's class,
on the input grid. A case is predicted once for all its items; classes without a prompt get no
click-0 entry.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from adapt3d.auto.predict import AutoPrediction, predict_working
from adapt3d.auto.prompts import ClassPrompts
from adapt3d.data.items import Item, PreparedCase
from adapt3d.infer.whole_volume import WholeVolumeConfig, WorkingVolume


class AutoMasks:
    """Automatic masks of items on the protocol's working grid (``protocol.target_spacing``,
    ``protocol.normalization``); ``seconds`` lists the time per case."""

    def __init__(self, model: nn.Module, prompts: ClassPrompts, protocol, modality: str, *, overlap: float = 0.25) -> None:
        self.model = model
        self.prompts = prompts
        self.modality = modality
        self.config = WholeVolumeConfig(overlap=overlap, normalization=protocol.normalization)
        self.seconds: list[float] = []
        self._case: tuple[str, AutoPrediction] | None = None

    def record(self) -> dict:
        """What the EVAL record says of the automatic masks: the classes with a prompt (the others
        get no click-0 entry) and the seconds of each case's automatic prediction."""
        return {"classes": list(self.prompts.class_names), "seconds": [round(s, 3) for s in self.seconds]}

    def __call__(self, item: Item, prepared: PreparedCase) -> np.ndarray | None:
        if item.class_name not in self.prompts.class_names:
            return None
        key = str(item.case.image_path)
        if self._case is None or self._case[0] != key:
            working = WorkingVolume(prepared.image, prepared.grid, self.modality)
            result = predict_working(self.model, self.prompts.to(next(self.model.parameters()).device), working, self.config)
            self.seconds.append(result.seconds)
            self._case = (key, result)
        return self._case[1].mask(item.class_name)


def evaluation_prompts(adapter: str | None, evaluator_is_nclick: bool) -> ClassPrompts:
    """The class prompts ``adapt3d evaluate --auto`` uses, checked before any data or model is read."""
    from adapt3d.auto.prompts import load_class_prompts
    from adapt3d.errors import ConfigError

    if adapter is None:
        raise ConfigError("--auto needs --adapter (an adapter trained with auto.enabled: true, holding class prompts)")
    if not evaluator_is_nclick:
        raise ConfigError("--auto adds click count 0 to the 3D N-click protocol of SAM-style cores only (not to sam2d, segvol or cvpr25)")
    return load_class_prompts(adapter)
