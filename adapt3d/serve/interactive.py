"""One client's interactive segmentation: its image, prompts, result and undo history.

The state is independent of HTTP and of the model: :class:`InteractiveState` records prompts
and results, :func:`ordered_prompts` says what the predictor gets, :func:`changed_region` what the
client must repaint. Results are kept as the mask inside its bounding box on the viewer's grid,
so a session costs memory in proportion to the object, not the volume.

A prediction reruns the whole-volume predictor on all the session's clicks (each click seeing
the previous mask inside its window); with the embedding cache that costs only prompt encoder and
decoder passes for windows already encoded (:class:`~adapt3d.infer.window_cache.WindowCache`). Scribbles and lassos become one click each (see
:func:`mask_to_click`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from adapt3d.data.imageio import Volume
from adapt3d.infer.whole_volume import WorkingVolume
from adapt3d.infer.window_cache import WindowCache
from adapt3d.serve.auto import AutoStart

UNDO_DEPTH = 32
Click = tuple[tuple[float, float, float], int]  # (voxel coordinates in the viewer's array, 1 / 0)


@dataclass(frozen=True)
class Result:
    """A binary mask on the viewer's grid, stored inside its bounding box (None: empty)."""

    box: tuple[slice, ...] | None = None
    mask: np.ndarray | None = None  # bool, shape of ``box``

    @classmethod
    def from_values(cls, box: tuple[slice, ...], probability: np.ndarray) -> Result:
        """The mask ``probability > 0.5`` inside ``box``, cropped to its tight bounding box."""
        mask = probability > 0.5
        if not mask.any():
            return cls()
        tight = []
        for axis in range(mask.ndim):
            hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            tight.append(slice(int(hits[0]), int(hits[-1]) + 1))
        inner = tuple(tight)
        outer = tuple(slice(b.start + t.start, b.start + t.stop) for b, t in zip(box, inner))
        return cls(outer, mask[inner].copy())

    def full(self, shape: Sequence[int]) -> np.ndarray:
        """The mask as a uint8 array of ``shape``."""
        out = np.zeros(tuple(shape), np.uint8)
        if self.box is not None:
            out[self.box] = self.mask
        return out


@dataclass(frozen=True)
class Step:
    """The state before one interaction (what undo restores)."""

    clicks: tuple[Click, ...]
    result: Result
    pending: bool
    auto: AutoStart | None


@dataclass
class InteractiveState:
    """Everything one lease holds. Methods are called under the lease's lock."""

    image: Volume | None = None
    prepared: WorkingVolume | None = None
    modality: str = ""
    adapter: str | None = None
    target: tuple[tuple[int, ...], np.dtype] | None = None  # client's target buffer (shape, dtype)
    clicks: list[Click] = field(default_factory=list)
    result: Result = field(default_factory=Result)
    pending: bool = False  # interactions added without a prediction since the last one
    history: deque[Step] = field(default_factory=lambda: deque(maxlen=UNDO_DEPTH))
    cache: WindowCache = field(default_factory=WindowCache)
    do_autozoom: bool = False
    auto: AutoStart | None = None  # an automatic result the clicks refine (adapt3d.serve.auto)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape

    def set_image(self, image: Volume, prepared: WorkingVolume, modality: str, adapter: str | None) -> None:
        """A new image: prompts, results, history, target buffer and cached embeddings are dropped."""
        self.image, self.prepared, self.modality, self.adapter = image, prepared, modality, adapter
        self.target = None
        self.cache.clear()
        self.reset()

    def reset(self) -> None:
        """Clear prompts, result, automatic start and undo history (cached embeddings of the image are kept)."""
        self.clicks, self.result, self.pending, self.auto = [], Result(), False, None
        self.history.clear()

    def _remember(self) -> None:
        self.history.append(Step(tuple(self.clicks), self.result, self.pending, self.auto))

    def add_click(self, point: Sequence[float], positive: bool) -> None:
        """Record a click (undoable); it is predicted on the next prediction."""
        self._remember()
        self.clicks.append((tuple(float(c) for c in point), 1 if positive else 0))
        self.pending = True

    def set_mask(self, result: Result) -> None:
        """An initial segmentation becomes the current result (undoable); prompts are cleared."""
        self._remember()
        self.clicks, self.result, self.pending, self.auto = [], result, False, None

    def set_auto(self, start: AutoStart, result: Result) -> None:
        """An automatic result becomes the current one (undoable); the clicks that follow refine it."""
        self._remember()
        self.clicks, self.result, self.pending, self.auto = [], result, False, start

    def undo(self) -> Result | None:
        """Restore the state before the last interaction; the previous result, or None if nothing to undo."""
        if not self.history:
            return None
        previous = self.result
        step = self.history.pop()
        self.clicks, self.result, self.pending, self.auto = list(step.clicks), step.result, step.pending, step.auto
        return previous


def ordered_prompts(clicks: Sequence[Click]) -> tuple[list[tuple[float, ...]], list[int]]:
    """Points and labels for the predictor: the first positive click first (the predictor starts
    from a positive click), then every other click in the order it was made. Empty without one."""
    first = next((i for i, (_, label) in enumerate(clicks) if label == 1), None)
    if first is None:
        return [], []
    order = [clicks[first]] + [c for i, c in enumerate(clicks) if i != first]
    return [p for p, _ in order], [lab for _, lab in order]


def mask_to_click(mask: np.ndarray, offset: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    """The voxel of a drawn region (scribble or lasso) farthest, in mm, from its border; ties go to
    the one nearest the region's centroid. ``offset`` places ``mask`` in the image."""
    region = np.asarray(mask) > 0
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(depth == depth.max())
    centroid = np.argwhere(region).mean(axis=0)
    best = deepest[int(np.argmin(np.linalg.norm((deepest - centroid) * np.asarray(spacing), axis=1)))]
    return tuple(float(b + o) for b, o in zip(best, offset))  # type: ignore[return-value]


def changed_region(old: Result, new: Result, dtype: np.dtype) -> tuple[list[list[int]], np.ndarray] | None:
    """The box covering both results and the new mask inside it (as ``dtype``), None if both are empty."""
    boxes = [r.box for r in (old, new) if r.box is not None]
    if not boxes:
        return None
    region = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
    values = np.zeros([s.stop - s.start for s in region], dtype)
    if new.box is not None:
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(new.box, region))
        values[inner] = new.mask
    return [[s.start, s.stop] for s in region], values
