"""The inference worker: every model call of the server runs on its one thread (one per device).

Sessions prepare their images and map results back on request threads, concurrently; only the
window loop (encoder, prompt encoder, mask decoder) is queued here, so two sessions never use the
model (or switch its adapter) at the same time.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

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
        box, probability = self._pool.submit(self._run, state, points, labels).result()
        in_box, values = box_to_input(probability, box, state.prepared.grid)
        result = Result.from_values(in_box, values)
        log.info("predicted %d clicks in %.3f s", len(points), time.perf_counter() - start)
        return result

    @torch.no_grad()
    def _run(self, state: InteractiveState, points: list, labels: list):
        with self.served.using(state.adapter):
            run = self.served.predictor.run_windows(state.prepared, points, labels, state.embeddings)
        return run.probability_box()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
