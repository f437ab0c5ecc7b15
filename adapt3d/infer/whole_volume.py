"""Whole-volume prompted prediction: windows grown from the clicks until the object is covered.

SAM-Med3D segments one cube (128³ at 1.5 mm = 192 mm) centred on the first click, so a larger
object is cut at the cube's faces. Here the first window is that same cube, placed from the
clicks only (no label is ever an input), and windows are added while the object continues:

1. Windows lie on a lattice of stride ``size × (1 - overlap)`` anchored at the first window; a
   further positive click outside the windows seeds a window centred on it.
2. After a window ran, each of its six faces that its own mask reaches, where the volume
   continues beyond (an "open" face), proposes the neighbouring lattice window. Windows run
   breadth-first until none is left (``stopped="complete"``) or ``max_windows`` ran
   (``stopped="budget"``, logged as a warning: the object may continue).
3. Prompts of a window: the user's clicks inside it, in their order. A window without a positive
   user click gets a *propagated* positive click first, at the deepest point (largest distance in
   mm to the border of the region and of the window) of the region predicted so far inside it,
   taken on the low-res grid among the voxels wholly inside that region (so the click lies in
   the predicted object at full resolution too). The blended logits already predicted inside
   the window (0 = "no information", the official first-click input, where nothing ran yet),
   averaged down to the low-res size, are its mask prompt. Clicks are applied one after another,
   each seeing the previous logits, so with one window the result is exactly the official
   single-crop prediction.
4. Window logits (upsampled to the window) are blended with per-voxel window weights, as MONAI's
   sliding-window inference does (``gaussian``, σ = size / 8, or ``constant``): Σ w·logit / Σ w.
   The probability is the sigmoid of the blend (0 where no window ran), mapped back onto the
   input's voxel grid; the affine is the input's.

Interactive callers (``adapt3d serve``) prepare the working volume once (:meth:`prepare`) and
rerun only the window loop (:meth:`run_windows`) after each click with a
:class:`~adapt3d.infer.window_cache.WindowCache`, so a window already encoded costs only prompt
encoder and mask decoder passes.

Cost: one encoder pass per window (windows are sequential: each one's prompts depend on the
previous ones), plus two float32 arrays of the working-grid size for the blend.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage, special
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from adapt3d.config import build_dataclass
from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import (
    NORMALISERS,
    Grid,
    Window,
    centred_window,
    clamp_ct,
    from_working_grid,
    normalise,
    to_working_grid,
)
from adapt3d.errors import ConfigError, InputError
from adapt3d.infer.predictor import check_points
from adapt3d.infer.resampling_policy import RESAMPLING, ResamplingRecord, working_spacing
from adapt3d.infer.window_cache import WindowCache
from adapt3d.prompts.loop import ClickLoop
from adapt3d.registry import Registry

log = logging.getLogger(__name__)
#: ``weights(size) -> (size, size, size)`` float32 blending weights of a window's voxels.
BLEND_WEIGHTS: Registry = Registry("blend mode")


@BLEND_WEIGHTS.register("gaussian")
def _gaussian(size: int) -> np.ndarray:
    """Separable Gaussian, σ = size / 8: a window's centre counts most, its faces least (all > 0)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * (size / 8) ** 2))
    return (g[:, None, None] * g[None, :, None] * g[None, None, :]).astype(np.float32)


@BLEND_WEIGHTS.register("constant")
def _constant(size: int) -> np.ndarray:
    """Equal weights: overlapping windows are averaged."""
    return np.ones((size,) * 3, np.float32)


@dataclass(frozen=True)
class WholeVolumeConfig:
    """Settings of whole-volume prediction (the keys of a ``whole_volume`` config section)."""

    resample: str = "isotropic"  # resampling policy (adapt3d.infer.resampling_policy)
    spacing: float = 1.5  # the policy's target spacing, mm (the core's training spacing)
    overlap: float = 0.25  # fraction of a window shared with its lattice neighbour
    max_windows: int = 27  # window budget (27 = a 3×3×3 block: 320 mm at 128³, 1.5 mm, 0.25)
    blend: str = "gaussian"  # overlap weights: gaussian | constant
    mask_prompt: bool = True  # feed what was predicted inside a window as its mask prompt
    normalization: str = "sam-med3d"  # per-window intensity normalisation

    def __post_init__(self) -> None:
        RESAMPLING.get(self.resample)
        NORMALISERS.get(self.normalization)
        BLEND_WEIGHTS.get(self.blend)
        if not self.spacing > 0:
            raise ConfigError(f"whole_volume.spacing: must be > 0 mm, got {self.spacing}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"whole_volume.overlap: must be in [0, 1), got {self.overlap}")
        if int(self.max_windows) != self.max_windows or self.max_windows < 1:
            raise ConfigError(f"whole_volume.max_windows: must be a positive integer, got {self.max_windows}")

    @classmethod
    def from_mapping(cls, values: Mapping, where: str = "whole_volume") -> WholeVolumeConfig:
        """Build from a config mapping; unknown keys raise :class:`ConfigError`."""
        return build_dataclass(cls, values, where)


@dataclass(frozen=True)
class WindowPrompt:
    """One window that ran and its prompts (working-grid voxel coordinates, in the order applied)."""

    window: Window
    points: np.ndarray  # (N, 3)
    labels: np.ndarray  # (N,) 1 positive, 0 negative
    propagated: bool  # the first point was propagated from the prediction (not a user click)


@dataclass
class WholeVolumePrediction:
    """A prediction on the input's voxel grid, with how it was made."""

    probability: np.ndarray  # float32, input grid
    mask: np.ndarray  # uint8 (probability > 0.5), input grid
    affine: np.ndarray  # the input's affine, unchanged
    windows: list[WindowPrompt]
    stopped: str  # "complete" (the object touches no open window face) or "budget"
    resampling: ResamplingRecord

    def summary(self) -> dict:
        """JSON-friendly facts for a report: resampling policy, windows, propagation, stop reason."""
        return {
            "resampling": asdict(self.resampling),
            "windows": len(self.windows),
            "propagated_clicks": sum(w.propagated for w in self.windows),
            "stopped": self.stopped,
            "voxels": int(self.mask.sum()),
        }


class WholeVolumePredictor:
    """Segments one object of any size in a volume of any spacing with a SAM-Med3D-format core."""

    def __init__(self, core: nn.Module, config: WholeVolumeConfig | None = None) -> None:
        self.core = core
        self.config = config or WholeVolumeConfig()
        size = core.image_size
        self.stride = max(1, round(size * (1 - self.config.overlap)))
        self.weights = BLEND_WEIGHTS.get(self.config.blend)(size)

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    def prepare(self, image: Volume, modality: str) -> WorkingVolume:
        """Clamp (CT), reorient and resample ``image`` once; windows are cut from the result."""
        cfg = self.config
        raw = Volume(clamp_ct(image.array, modality), image.affine, image.header, image.path)
        work, grid = to_working_grid(raw, working_spacing(cfg.resample, cfg.spacing, image.affine))
        return WorkingVolume(work, grid, modality)

    @torch.no_grad()
    def predict(
        self, image: Volume, modality: str, points_ijk: Sequence[Sequence[float]], point_labels: Sequence[int]
    ) -> WholeVolumePrediction:
        """Segment the object clicked at input voxel indices ``points_ijk`` (``point_labels``: 1 / 0).

        The clicks are the only prompt: no label map is taken, so none can leak into the result.
        """
        _check_prompts(image, points_ijk, point_labels)
        prepared = self.prepare(image, modality)
        run = self.run_windows(prepared, points_ijk, point_labels)
        working = np.zeros(prepared.work.shape, np.float32)
        box, inside = run.probability_box()
        working[box] = inside
        probability = from_working_grid(working, prepared.grid, order=1).astype(np.float32, copy=False)
        return WholeVolumePrediction(
            probability,
            (probability > 0.5).astype(np.uint8),
            image.affine.copy(),
            run.windows,
            run.stopped,
            run.resampling,
        )

    @torch.no_grad()
    def run_windows(
        self,
        prepared: WorkingVolume,
        points_ijk: Sequence[Sequence[float]],
        point_labels: Sequence[int],
        cache: WindowCache | None = None,
    ) -> WindowRun:
        """The window loop on a prepared volume (prompts checked by the caller).

        ``cache`` (optional, one per image and model) reuses embeddings and prompt-prefix logits
        of earlier runs (see :mod:`adapt3d.infer.window_cache`); results are the same without it.
        """
        cfg, size, grid, work = self.config, self.core.image_size, prepared.grid, prepared.work
        clicks = np.stack([grid.to_working(np.asarray(p, dtype=float)) for p in points_ijk])
        click_labels = np.asarray(point_labels, dtype=np.int64)
        blend = _Blend(work.shape, self.weights)
        queue = deque(_seed_windows(clicks, click_labels, size))
        known = [w.start for w in queue]
        runs: list[WindowPrompt] = []
        with tqdm(total=cfg.max_windows, desc="windows", unit="win", disable=None) as bar:
            while queue and len(runs) < cfg.max_windows:
                window = queue.popleft()
                prior = torch.from_numpy(blend.logits_in(window))[None, None]
                factor = size // self.core.low_res_size
                certain = -F.max_pool3d(-prior, factor)[0, 0].numpy() > 0  # low-res voxels wholly inside
                prompt = _window_prompt(window, clicks, click_labels, certain, grid.spacing)
                if prompt is None:
                    continue
                low_prior = F.avg_pool3d(prior, factor)
                mask_in = low_prior if cfg.mask_prompt else torch.zeros_like(low_prior)
                logits = self._segment(prepared, prompt, mask_in, cache)
                blend.add(window, logits)
                runs.append(prompt)
                bar.update()
                for nxt in _grown(window, logits > 0, work.shape, self.stride):
                    if all(max(abs(a - b) for a, b in zip(nxt.start, s)) >= self.stride / 2 for s in known):
                        queue.append(nxt)  # not (nearly) a window already run or queued
                        known.append(nxt.start)
        if queue:
            log.warning("whole-volume prediction stopped at the %d-window budget; the object may continue", len(runs))
        record = ResamplingRecord.of(cfg.resample, cfg.spacing, grid, size)
        return WindowRun(blend, runs, "budget" if queue else "complete", record)

    def _segment(
        self, prepared: WorkingVolume, prompt: WindowPrompt, mask_in: torch.Tensor, cache: WindowCache | None
    ) -> np.ndarray:
        """Window logits (size³) after applying its clicks one by one from the mask prompt."""
        device, window = self.device, prompt.window
        emb = prepared.encode(self.core, window, self.config.normalization, cache)
        rel = prompt.points - np.asarray(window.start, dtype=float)
        pts = torch.tensor(rel, dtype=torch.float32).round()[None].to(device)
        lab = torch.from_numpy(prompt.labels)[None].to(device)
        start, done = mask_in.to(device), 0
        reuse = cache is not None and not bool(mask_in.any())  # logits then depend on the prompts only
        if reuse:
            for n in range(len(prompt.labels), 0, -1):
                hit = cache.logits.get(cache.prompt_key(window.start, pts, lab, n))
                if hit is not None:
                    start, done = hit, n
                    break
        loop = ClickLoop(self.core, emb, start=start)
        for n in range(done + 1, len(prompt.labels) + 1):
            logits = loop.step(pts[:, :n], lab[:, :n])
            if reuse:
                cache.logits[cache.prompt_key(window.start, pts, lab, n)] = logits
        return loop.upsampled()[0, 0].cpu().numpy()


@dataclass
class WorkingVolume:
    """An image clamped, reoriented to RAS and resampled to the working grid (see ``prepare``)."""

    work: np.ndarray
    grid: Grid
    modality: str

    def encode(self, core: nn.Module, window: Window, normalization: str, cache: WindowCache | None = None) -> torch.Tensor:
        """The image embedding of ``window`` (normalised crop, on the core's device); kept in and
        reused from ``cache`` by window start when given."""
        emb = None if cache is None else cache.embeddings.get(window.start)
        if emb is None:
            crop = normalise(window.extract(self.work), self.modality, normalization)
            emb = core.encode(torch.from_numpy(crop)[None, None].to(next(core.parameters()).device))
            if cache is not None:
                cache.embeddings[window.start] = emb
        return emb


@dataclass
class WindowRun:
    """The windows that ran on a working volume and their blended logits."""

    blend: _Blend
    windows: list[WindowPrompt]
    stopped: str
    resampling: ResamplingRecord

    def probability_box(self) -> tuple[tuple[slice, ...], np.ndarray]:
        """Working-grid slices of the box the windows cover and the probability inside it
        (sigmoid of the blend, 0 where no window ran); outside the box the probability is 0."""
        return self.blend.probability_box([w.window for w in self.windows])


class _Blend:
    """Running weighted sums of window logits on the working grid."""

    def __init__(self, shape: tuple[int, ...], weights: np.ndarray) -> None:
        self.shape = shape
        self.weights = weights
        self.logit_sum = np.zeros(shape, np.float32)
        self.weight_sum = np.zeros(shape, np.float32)

    def add(self, window: Window, logits: np.ndarray) -> None:
        """Accumulate one window's logits (the part inside the volume)."""
        in_volume, in_window = window.overlap(self.shape)
        self.logit_sum[in_volume] += self.weights[in_window] * logits[in_window]
        self.weight_sum[in_volume] += self.weights[in_window]

    def logits_in(self, window: Window) -> np.ndarray:
        """Blended logits inside ``window``; 0 where nothing was predicted (or outside the volume)."""
        total, weight = window.extract(self.logit_sum), window.extract(self.weight_sum)
        return np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)

    def probability_box(self, windows: Sequence[Window]) -> tuple[tuple[slice, ...], np.ndarray]:
        """Slices of the bounding box of ``windows`` (inside the volume) and the sigmoid of the
        blended logits there, 0 where no window ran."""
        boxes = [w.overlap(self.shape)[0] for w in windows]
        if not boxes:
            return tuple(slice(0, 0) for _ in self.shape), np.zeros((0,) * len(self.shape), np.float32)
        box = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(self.shape)))
        total, weight = self.logit_sum[box], self.weight_sum[box]
        covered = weight > 0
        out = np.divide(total, weight, out=np.zeros_like(total), where=covered)
        special.expit(out, out=out)
        out[~covered] = 0.0
        return box, out


def _check_prompts(image: Volume, points_ijk: Sequence[Sequence[float]], point_labels: Sequence[int]) -> None:
    check_points(image, points_ijk, point_labels)
    if point_labels[0] != 1:
        raise InputError("the first point must be positive (inside the object)")


def _seed_windows(clicks: np.ndarray, labels: np.ndarray, size: int) -> list[Window]:
    """A window centred on the first click, then on each positive click outside the earlier ones."""
    seeds: list[Window] = []
    for point in clicks[labels == 1]:
        if not any(w.contains(point) for w in seeds):
            seeds.append(centred_window(point, size))
    return seeds


def _window_prompt(
    window: Window, clicks: np.ndarray, labels: np.ndarray, predicted: np.ndarray, spacing: Sequence[float]
) -> WindowPrompt | None:
    """The user clicks inside ``window``, after a propagated positive one if none of them is positive.

    ``predicted``: low-res voxels of the window wholly inside the object predicted so far (so a
    propagated click at one's centre is in the object at full resolution too). None when a
    propagated click is needed but no such voxel exists.
    """
    inside = np.array([window.contains(p) for p in clicks])
    points, labs = clicks[inside], labels[inside]
    if (labs == 1).any():
        return WindowPrompt(window, points, labs, propagated=False)
    deepest = _deepest_point(predicted, window.size / predicted.shape[0], spacing)
    if deepest is None:
        return None
    start = np.asarray(window.start, dtype=float)
    return WindowPrompt(window, np.vstack([start + deepest, points]), np.concatenate([[1], labs]), propagated=True)


def _deepest_point(region: np.ndarray, factor: float, spacing: Sequence[float]) -> np.ndarray | None:
    """Window coordinates of the low-res voxel of ``region`` farthest (mm) from its and the window's border."""
    if not region.any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=[factor * s for s in spacing])[1:-1, 1:-1, 1:-1]
    low = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), dtype=float)
    return (low + 0.5) * factor - 0.5  # centre of that low-res voxel in window voxels


def _grown(window: Window, foreground: np.ndarray, shape: tuple[int, ...], stride: int) -> list[Window]:
    """Lattice neighbours of ``window`` across each open face that the in-volume foreground reaches."""
    _, in_window = window.overlap(shape)
    fg = np.zeros_like(foreground)
    fg[in_window] = foreground[in_window]
    out = []
    for axis in range(3):
        start = window.start[axis]
        for step, layer, open_face in ((-1, 0, start > 0), (1, window.size - 1, start + window.size < shape[axis])):
            if open_face and np.take(fg, layer, axis=axis).any():
                moved = list(window.start)
                moved[axis] += step * stride
                out.append(Window(tuple(moved), window.size))  # type: ignore[arg-type]
    return out
