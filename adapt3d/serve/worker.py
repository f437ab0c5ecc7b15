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
from scipy import special

from adapt3d.auto.predict import blended_class_logits
from adapt3d.auto.refine import refine_logits
from adapt3d.evaluate.nclick import eval_mode
from adapt3d.serve.auto import AutoStart
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
        """The session's result for all its clicks: refining its automatic start when it has one
        (clicks in the order made), else from the clicks alone (empty without a positive click)."""
        if state.auto is not None:
            return self._refined(state)
        points, labels = ordered_prompts(state.clicks)
        if not points:
            return Result()
        start = time.perf_counter()
        result = self._result(state, *self._pool.submit(self._run, state, points, labels).result())
        log.info("predicted %d clicks in %.3f s", len(points), time.perf_counter() - start)
        return result

    def automatic(self, state: InteractiveState, class_name: str) -> tuple[AutoStart, Result]:
        """The automatic logits of ``class_name`` on the session's image and the result they give."""
        start = time.perf_counter()
        prior = self._pool.submit(self._prior, state, class_name).result()
        result = self._result(state, *_whole(prior))
        log.info("automatic %s in %.3f s", class_name, time.perf_counter() - start)
        return AutoStart(class_name, prior), result

    def _refined(self, state: InteractiveState) -> Result:
        if not state.clicks:
            return state.result
        points, labels = [p for p, _ in state.clicks], [lab for _, lab in state.clicks]
        logits = self._pool.submit(self._refine, state, points, labels).result()
        return self._result(state, *_whole(logits))

    def _result(self, state: InteractiveState, box: tuple[slice, ...], probability: np.ndarray) -> Result:
        """The input-grid result of a working-grid probability inside ``box``."""
        box, probability = _foreground_box(box, probability)
        in_box, values = box_to_input(probability, box, state.prepared.grid)
        return Result.from_values(in_box, values)

    @torch.no_grad()
    def _run(self, state: InteractiveState, points: list, labels: list):
        with self.served.using(state.adapter):
            run = self.served.predictor.run_windows(state.prepared, points, labels, state.cache)
        return run.probability_box()

    @torch.no_grad()
    def _prior(self, state: InteractiveState, class_name: str) -> np.ndarray:
        prompts = self.served.class_prompts[state.adapter]
        with self.served.using(state.adapter) as model, eval_mode(model):
            logits, _ = blended_class_logits(model, prompts, state.prepared, prompts.indices([class_name]),
                                             self.served.predictor.config)
        return logits[0]

    @torch.no_grad()
    def _refine(self, state: InteractiveState, points: list, labels: list) -> np.ndarray:
        with self.served.using(state.adapter) as model, eval_mode(model):
            logits, _ = refine_logits(model, state.auto.prior, state.prepared, points, labels,
                                      self.served.predictor.config, state.cache)
        return logits

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _whole(logits: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The whole working grid as a box and the probability (sigmoid) of ``logits`` on it."""
    return tuple(slice(0, n) for n in logits.shape), special.expit(logits).astype(np.float32)


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
