"""What interactive whole-volume prediction can reuse between clicks on one image.

``adapt3d serve`` reruns the window loop after every click. A window's image embedding depends
only on the image and the window, so it is kept by window start. The logits after a window's
first n prompts depend only on the embedding, those prompts and the window's mask prompt; when
the mask prompt is empty (the first window of an object), they are kept by (window, prompts), so
a later click in that window costs one mask-decoder pass, not one per click so far. Entries are
dropped least recently used first. A cache belongs to one image and one model (adapter).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch


class LRU(OrderedDict):
    """A mapping that drops its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, key: Hashable, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key: Hashable, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


@dataclass
class WindowCache:
    """Embeddings by window start; logits by (window start, prompts so far) for empty mask prompts."""

    embeddings: LRU = field(default_factory=lambda: LRU(32))
    logits: LRU = field(default_factory=lambda: LRU(256))

    def clear(self) -> None:
        self.embeddings.clear()
        self.logits.clear()

    @staticmethod
    def prompt_key(start: tuple[int, ...], points: torch.Tensor, labels: torch.Tensor, n: int) -> tuple:
        """Key of the logits after the first ``n`` prompts of a window."""
        return start, points[0, :n].cpu().numpy().tobytes(), labels[0, :n].cpu().numpy().tobytes()
