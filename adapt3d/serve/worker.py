"""The inference worker: every model call of the server runs on its one thread (one per device).

Sessions prepare their images and map results back on request threads, concurrently; only the
window loop (encoder, prompt encoder, mask decoder) is queued here, so two sessions never use the
model (or switch its adapter) at the same time.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from adapt3d.serve.geometry import box_to_input
from adapt3d.serve.interactive import InteractiveState, Result, ordered_prompts
from adapt3d.serve.model import ServedModel

log = logging.getLogger(__name__)


class InferenceWorker:
    """Serialises predictions of all sessions on one thread."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapt3d-inference")

    def segment(self, state: InteractiveState) -> Result:
        """The session's result for all its clicks (empty without a positive click)."""
        points, labels = ordered_prompts(state.clicks)
        if not points:
            return Result()
        start = time.perf_counter()
        box, probability = _foreground_box(*self._pool.submit(self._run, state, points, labels).result())
        in_box, values = box_to_input(probability, box, state.prepared.grid)
        result = Result.from_values(in_box, values)
        log.info("predicted %d clicks in %.3f s", len(points), time.perf_counter() - start)
        return result

    @torch.no_grad()
    def _run(self, state: InteractiveState, points: list, labels: list):
        with self.served.using(state.adapter):
            run = self.served.predictor.run_windows(state.prepared, points, labels, state.cache)
        return run.probability_box()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _foreground_box(box: tuple[slice, ...], probability: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The part of a working box within 2 voxels of a probability > 0.5, with the rest zeroed.

    Mapped back by linear interpolation, an input voxel exceeds 0.5 only if one of its working
    neighbours does, and all its neighbours then lie in this part, so the mask comes out exactly
    as from the whole box while only the object's surroundings are resampled.
    """
    inside = probability > 0.5
    if not inside.any():
        return tuple(slice(b.start, b.start) for b in box), probability[:0, :0, :0]
    sub = []
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        sub.append(slice(max(0, int(hits[0]) - 2), min(inside.shape[axis], int(hits[-1]) + 3)))
    return tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub)), probability[tuple(sub)]
