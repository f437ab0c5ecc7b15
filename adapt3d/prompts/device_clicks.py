"""Batched click simulation for training, on the masks' own device: no host round trip per round.

Training simulates a click per crop and round on (B, D, H, W) masks that live on the GPU. The
numpy simulators of :mod:`adapt3d.prompts.clicks` need the masks on the host (a device→host copy
and a synchronisation per round); the policies registered in :data:`DEVICE_CLICK_SIMULATORS` run
on the batch where it is, with a seeded :class:`torch.Generator` on that device, and never read a
value back. :class:`TrainingClicks` uses one when the configured simulator has one and falls back
to the numpy simulator otherwise (e.g. ``center``, whose deepest-point search needs scipy).
The numpy simulators stay the reference for evaluation, where exact ties matter.

Semantics shared with the host path (and tested against it):

* round 0 clicks the object (the error of an empty prediction); crops whose ground truth is
  empty get one negative click at a uniformly drawn voxel, and no click after that;
* a crop whose prediction is exact gets no click that round (label -1, "no point");
* voxels outside ``valid`` (unknown label) are never clicked.

The host path pads shorter click lists at the end; here every crop has one token per round, a
crop without a click that round holding a "no point" token in its place.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from adapt3d.prompts.clicks import CLICK_SIMULATORS, Click, clicks_to_tensors
from adapt3d.registry import Registry

#: A batched policy: (pred (B, …) bool or None before the first click, gt, valid, generator) →
#: (points (B, 3) float32 voxel indices, labels (B,) int64: 1 positive, 0 negative, -1 no click).
DeviceClickSimulator = Callable[
    [torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]
DEVICE_CLICK_SIMULATORS: Registry[DeviceClickSimulator] = Registry("on-device click simulator")
#: Device types on which training keeps the numpy simulators: there the masks already live on the
#: host, numpy is faster there (128³, batch 2, 5 rounds, on this project's shared 2-core CPU: 50–80 ms
#: per step vs 400–560 ms batched in torch), and CPU runs keep the clicks of earlier versions exactly.
HOST_DEVICE_TYPES: set[str] = {"cpu"}


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B,) flat indices into ``shape`` → (B, len(shape)) float32 array-order indices."""
    coords = []
    for n in reversed(shape):
        coords.append(flat % n)
        flat = torch.div(flat, n, rounding_mode="floor")
    return torch.stack(coords[::-1], dim=1).float()


def _kth(running: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, the first position where a running count reaches ``k + 1``: (B, n), (B,) → (B,)."""
    return torch.searchsorted(running, (k + 1)[:, None])[:, 0].clamp_max(running.shape[1] - 1)


def uniform_choice(candidates: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One voxel drawn uniformly among the True voxels of each (…) mask of a (B, …) batch.

    Returns (B,) flat indices and (B,) "has a candidate" flags. With n candidates and one uniform
    draw u, the ⌊u·n⌋-th candidate is a uniform choice; it is found in two binary searches (the
    block of √N voxels that holds it, then the voxel inside), from per-block counts: one random
    number per mask, two small running sums, and no value read back to the host.
    """
    flat = candidates.flatten(1)
    b, n = flat.shape
    size = 1 << max(0, (n - 1).bit_length() + 1) // 2  # a power of two near √n
    if n % size:
        flat = torch.cat([flat, flat.new_zeros(b, size - n % size)], dim=1)
    blocks = flat.reshape(b, -1, size)
    per_block = blocks.sum(dim=2)
    running = per_block.cumsum(dim=1)
    count = running[:, -1]
    u = torch.rand(count.shape, generator=generator, device=count.device, dtype=torch.float64)
    k = torch.minimum((u * count).long(), (count - 1).clamp_min(0))
    block = _kth(running, k)
    before = (running - per_block).gather(1, block[:, None])[:, 0]
    inside = blocks.gather(1, block[:, None, None].expand(b, 1, size))[:, 0].cumsum(dim=1)
    return (block * size + _kth(inside, k - before)).clamp_max(n - 1), count > 0


@DEVICE_CLICK_SIMULATORS.register("random")
def random_clicks_batched(
    pred: torch.Tensor | None, gt: torch.Tensor, valid: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``random`` training protocol on a batch: a uniform object voxel first, then a uniform
    error voxel (positive on a false negative, negative on a false positive), within ``valid``."""
    errors = gt if pred is None else (pred ^ gt) & valid
    errors = errors & gt.flatten(1).any(dim=1).view(-1, *(1,) * (gt.dim() - 1))  # empty gt: no corrective click
    flat, has = uniform_choice(errors, generator)
    positive = gt.flatten(1).gather(1, flat[:, None])[:, 0]
    labels = torch.where(has, positive.long(), torch.full_like(flat, -1))
    return _unravel(flat, tuple(gt.shape[1:])), labels


class TrainingClicks:
    """The clicks of one batch over its rounds: ``step(pred)`` adds a click per crop and returns all
    of them as (points (B, N, 3), labels (B, N)) on the masks' device, ready for ``decode``.

    ``gt`` and ``valid`` are (B, D, H, W) bool; ``rng`` seeds the device generator (and drives the
    numpy simulators), so the same rng state gives the same clicks. The numpy simulators run where
    the simulator has no batched version, and on :data:`HOST_DEVICE_TYPES`.
    """

    def __init__(self, simulator: str, gt: torch.Tensor, valid: torch.Tensor, rng: np.random.Generator) -> None:
        self.gt, self.valid, self.rng = gt, valid, rng
        on_device = simulator in DEVICE_CLICK_SIMULATORS and gt.device.type not in HOST_DEVICE_TYPES
        self.batched = DEVICE_CLICK_SIMULATORS.get(simulator) if on_device else None
        self.host = None if self.batched is not None else CLICK_SIMULATORS.get(simulator)
        self.generator = None
        if self.batched is not None:
            self.generator = torch.Generator(device=gt.device).manual_seed(int(rng.integers(2**62)))
        self.points: torch.Tensor = gt.new_zeros((gt.shape[0], 0, 3), dtype=torch.float32)
        self.labels: torch.Tensor = gt.new_zeros((gt.shape[0], 0), dtype=torch.int64)
        self.lists: list[list[Click]] = [[] for _ in range(gt.shape[0])]
        self.host_gt: np.ndarray | None = None
        self.rounds = 0

    def step(self, pred: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this round's clicks given the current prediction (None before the first click)."""
        first = self.rounds == 0
        self.rounds += 1
        if self.batched is None:
            return self._host_step(pred)
        points, labels = self.batched(pred, self.gt, self.valid, self.generator)
        if first:  # a crop without foreground still needs one (negative) prompt
            dev, b = points.device, points.shape[0]
            random_voxel = torch.stack(
                [torch.randint(0, n, (b,), generator=self.generator, device=dev) for n in self.gt.shape[1:]], dim=1
            ).float()
            empty = labels < 0
            points = torch.where(empty[:, None], random_voxel, points)
            labels = torch.where(empty, torch.zeros_like(labels), labels)
        self.points = torch.cat([self.points, points[:, None]], dim=1)
        self.labels = torch.cat([self.labels, labels[:, None]], dim=1)
        return self.points, self.labels

    def _host_step(self, pred: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The numpy simulators, one crop at a time (masks copied to the host)."""
        if self.host_gt is None:
            self.host_gt = self.gt.cpu().numpy()
        gt = self.host_gt
        current = None if pred is None else (pred & self.valid).cpu().numpy()
        for i, clicks in enumerate(self.lists):
            if not gt[i].any():
                continue
            click = self.host(None if current is None else current[i], gt[i], rng=self.rng)
            if click is not None:
                clicks.append(click)
        for clicks in self.lists:
            if not clicks:
                clicks.append(Click(tuple(int(v) for v in self.rng.integers(0, gt.shape[-1], 3)), False))
        points, labels = clicks_to_tensors(self.lists)
        return points.to(self.gt.device), labels.to(self.gt.device)
