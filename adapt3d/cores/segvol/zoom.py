"""SegVol zoom-out-zoom-in inference on volumes of any size and spacing.

1. Zoom out: the whole volume (zero-padded to at least the model input, centred, as SegVol's
   ``SpatialPad`` does) is resized (nearest-exact) to the model input, segmented with the prompts
   mapped onto that grid, and the logits are resized back (nearest).
2. Region of interest: the bounding box of the coarse foreground together with the box and the
   positive points, grown (centred) to at least one model input where the volume allows.
3. Zoom in: MONAI ``sliding_window_inference`` over the ROI at native resolution, windows of the
   model input size, overlap blending. Each window is prompted from what lies inside it: the
   text, the user's points, and a box — the user's box when the ROI is a single window, else
   the box of the coarse foreground in the window (the user's box where that is empty), as in
   SegVol's demo. A window left with no prompt keeps the coarse logits.

Arrays are in the model's axis order (d, h, w); :func:`segment_volume` maps a NIfTI
:class:`~adapt3d.data.imageio.Volume` to it (RAS, then (z, y, x), as SegVol's pipeline) and back.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import NORMALISERS, Grid, from_working_grid, to_working_grid
from adapt3d.errors import ConfigError

Roi = tuple[slice, slice, slice]


@dataclass
class ZoomResult:
    """Logits on the input grid, the zoom-out logits, the refined region and the windows run."""

    logits: torch.Tensor  # (D, H, W)
    coarse_logits: torch.Tensor  # (D, H, W)
    roi: Roi | None  # None: nothing found and no positive prompt, no zoom-in
    num_windows: int


@NORMALISERS.register("segvol")
def segvol_normalise(array: np.ndarray, modality: str = "CT") -> np.ndarray:
    """SegVol's intensity normalisation: clip to the 0.05–99.95 percentiles of the voxels above the
    mean, z-score with their mean and sd, then min-max scale to [0, 1]."""
    a = np.asarray(array, dtype=np.float64)
    fg = a[a > a.mean()]
    if fg.size:
        a = (np.clip(a, *np.percentile(fg, [0.05, 99.95])) - fg.mean()) / max(float(fg.std()), 1e-8)
    a = a - a.min()
    return (a / max(float(a.max()), 1e-8)).astype(np.float32)


def _bbox(mask: torch.Tensor) -> torch.Tensor | None:
    """(d0, h0, w0, d1, h1, w1) inclusive bounds of a boolean mask; None when empty."""
    idx = torch.nonzero(mask)
    if idx.numel() == 0:
        return None
    return torch.cat([idx.min(0).values, idx.max(0).values]).float()


def _segment(model: nn.Module, image: torch.Tensor, text, modality: str, boxes, points) -> torch.Tensor:
    """Logits (B, 1, *input size) of (B, 1, *model input) images, through ``encode``/``decode`` only
    (so adapted models work too), upsampled trilinearly as SegVol does."""
    coords, labels = (None, None) if points is None else points
    low, _ = model.decode(model.encode(image), coords, labels, boxes=boxes, text=text, modality=modality)
    return F.interpolate(low, size=tuple(image.shape[2:]), mode="trilinear", align_corners=False)


class _WindowPredictor:
    """Prompts each sliding window from its channels (image, coarse logits, box map, point map)."""

    def __init__(self, model: nn.Module, text, modality: str, use_box: bool, use_points: bool, single: bool):
        self.model, self.text, self.modality = model, text, modality
        self.use_box, self.use_points, self.single = use_box, use_points, single
        self.count = 0

    def _prompt(self, window: torch.Tensor) -> tuple[torch.Tensor | None, tuple | None]:
        coarse, box_map, point_map = window[1] > 0, window[2] > 0, window[3]
        box = None
        if self.use_box and self.single:
            box = _bbox(box_map)
        elif self.use_box or self.use_points:
            box = _bbox(coarse)
            if box is None and self.use_box:
                box = _bbox(box_map)
        points = None
        if self.use_points:
            idx = torch.nonzero(point_map)
            if len(idx):
                labels = (point_map[tuple(idx.T)] > 0).float()
                points = (idx.float()[None], labels[None])
        return box, points

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        out = []
        for window in windows:
            self.count += 1
            box, points = self._prompt(window)
            if box is None and points is None and self.text is None:
                out.append(window[1:2])
                continue
            boxes = None if box is None else box[None]
            out.append(_segment(self.model, window[None, :1], self.text, self.modality, boxes, points)[0])
        return torch.stack(out)


def _check_prompts(
    points: torch.Tensor | None, labels: torch.Tensor | None, box: torch.Tensor | None, shape: tuple[int, ...]
) -> None:
    if points is not None and (points.dim() != 2 or points.shape[1] != 3 or labels is None
                               or labels.shape != points.shape[:1]):
        raise ValueError("points must be (N, 3) voxel indices with labels (N,)")
    if box is not None and box.shape != (6,):
        raise ValueError(f"box must be (d0, h0, w0, d1, h1, w1), got shape {tuple(box.shape)}")
    limit = torch.tensor(shape, dtype=torch.float32) - 1
    for name, coords in (("point", points), ("box corner", None if box is None else box.view(2, 3))):
        if coords is not None and ((coords < 0) | (coords > limit)).any():
            raise ConfigError(f"{name} outside the volume of shape {tuple(shape)}: {coords.tolist()}")


def _zoom_out(model: nn.Module, image: torch.Tensor, text, modality: str, points, labels, box) -> torch.Tensor:
    size = tuple(model.config.image_size)
    deficit = [max(0, s - n) for s, n in zip(size, image.shape)]
    lo = torch.tensor([d // 2 for d in deficit], dtype=torch.float32)
    padded = F.pad(image, [p for d in reversed(deficit) for p in (d // 2, d - d // 2)])
    scale = torch.tensor(size, dtype=torch.float32) / torch.tensor(padded.shape, dtype=torch.float32)
    resized = F.interpolate(padded[None, None], size=size, mode="nearest-exact")
    pts = None if points is None else (((points + lo + 0.5) * scale - 0.5)[None], labels[None].float())
    boxes = None
    if box is not None:
        top = torch.tensor(size, dtype=torch.float32) - 1
        start = ((box[:3] + lo) * scale).clamp(min=0)
        end = torch.minimum((box[3:] + lo + 1) * scale - 1, top)
        boxes = torch.cat([start, torch.maximum(start, end)])[None]
    dev = resized.device
    logits = _segment(model, resized, text, modality, None if boxes is None else boxes.to(dev),
                      None if pts is None else (pts[0].to(dev), pts[1].to(dev)))
    back = F.interpolate(logits, size=tuple(padded.shape), mode="nearest")[0, 0]
    d0, h0, w0 = (int(v) for v in lo)
    d, h, w = image.shape
    return back[d0 : d0 + d, h0 : h0 + h, w0 : w0 + w]


def _roi(coarse: torch.Tensor, points, labels, box, window: Sequence[int]) -> Roi | None:
    mask = coarse > 0
    if box is not None:
        b = box.long().tolist()
        mask[b[0] : b[3] + 1, b[1] : b[4] + 1, b[2] : b[5] + 1] = True
    if points is not None:
        for p in points[labels == 1].round().long().tolist():
            mask[tuple(p)] = True
    bounds = _bbox(mask)
    if bounds is None:
        return None
    roi = []
    for lo, hi, n, w in zip(bounds[:3].long().tolist(), bounds[3:].long().tolist(), mask.shape, window):
        extent = min(n, max(hi + 1 - lo, w))
        start = min(max(0, (lo + hi + 1 - extent) // 2), n - extent)
        roi.append(slice(start, start + extent))
    return tuple(roi)  # type: ignore[return-value]


@torch.no_grad()
def zoom_out_zoom_in(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    *,
    text: str | torch.Tensor | None = None,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    box: torch.Tensor | Sequence[float] | None = None,
    modality: str = "CT",
    zoom_in: bool = True,
    overlap: float = 0.5,
    blend: str = "constant",
    sw_batch_size: int = 1,
    progress: bool | None = None,
) -> ZoomResult:
    """Segment one object of a (D, H, W) volume (normalised to [0, 1], model axis order).

    ``text`` is a class name (or a (1, C) text embedding); ``points`` (N, 3) voxel indices with
    ``labels`` (N,) 1 positive / 0 negative; ``box`` (d0, h0, w0, d1, h1, w1) inclusive voxel
    indices — all in the coordinates of ``image``. ``blend`` is MONAI's "constant" or "gaussian".
    """
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    image = torch.as_tensor(image, dtype=torch.float32, device=device)
    if image.dim() != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(image.shape)}")
    points = None if points is None else torch.as_tensor(points, dtype=torch.float32).cpu()
    labels = None if labels is None else torch.as_tensor(labels).cpu()
    box = None if box is None else torch.as_tensor(box, dtype=torch.float32).cpu()
    if text is None and points is None and box is None:
        raise ConfigError("zoom-out-zoom-in needs a prompt: a class name (text), points or a box")
    _check_prompts(points, labels, box, tuple(image.shape))
    coarse = _zoom_out(model, image, text, modality, points, labels, box)
    window = tuple(model.config.image_size)
    roi = _roi(coarse.cpu(), points, labels, box, window) if zoom_in else None
    if roi is None:
        return ZoomResult(coarse.clone(), coarse, None, 0)

    box_map = torch.zeros_like(image)
    if box is not None:
        b = box.long().tolist()
        box_map[b[0] : b[3] + 1, b[1] : b[4] + 1, b[2] : b[5] + 1] = 1
    point_map = torch.zeros_like(image)
    if points is not None:
        for p, lab in zip(points.round().long().tolist(), labels.tolist()):
            if lab in (0, 1):
                point_map[tuple(p)] = 1.0 if lab == 1 else -1.0
    inputs = torch.stack([image[roi], coarse[roi], box_map[roi], point_map[roi]])[None]
    single = all(s.stop - s.start <= w for s, w in zip(roi, window))
    predictor = _WindowPredictor(model, text, modality, box is not None, points is not None, single)
    refined = sliding_window_inference(
        inputs, window, sw_batch_size, predictor, overlap=overlap, mode=blend, padding_mode="constant", cval=0.0,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    logits = coarse.clone()
    logits[roi] = torch.as_tensor(refined)[0, 0]
    return ZoomResult(logits, coarse, roi, predictor.count)


def volume_to_model(volume: Volume) -> tuple[torch.Tensor, Grid]:
    """The volume reoriented to RAS, transposed to (z, y, x) and normalised as SegVol does."""
    canonical, grid = to_working_grid(volume, target_spacing=None)
    return torch.from_numpy(segvol_normalise(np.ascontiguousarray(canonical.transpose(2, 1, 0)))), grid


def ijk_to_model(ijk: Sequence[float], grid: Grid) -> np.ndarray:
    """Voxel coordinates of the input file → (d, h, w) coordinates of :func:`volume_to_model`'s array."""
    return grid.to_working(np.asarray(ijk, dtype=float))[::-1].copy()


def segment_volume(
    model: nn.Module,
    volume: Volume,
    *,
    text: str | None = None,
    points_ijk: Sequence[Sequence[float]] | None = None,
    labels: Sequence[int] | None = None,
    box_ijk: Sequence[Sequence[float]] | None = None,
    **options,
) -> tuple[np.ndarray, ZoomResult]:
    """Zoom-out-zoom-in on a NIfTI volume; logits on the volume's own voxel grid, and the raw result.

    ``points_ijk`` and the two corners in ``box_ijk`` are voxel indices of the input file;
    ``options`` go to :func:`zoom_out_zoom_in` (``modality``, ``overlap``, ``blend``, ...).
    """
    image, grid = volume_to_model(volume)
    points = None
    if points_ijk is not None:
        points = torch.tensor(np.array([ijk_to_model(p, grid) for p in points_ijk]), dtype=torch.float32)
    box = None
    if box_ijk is not None:
        corners = np.array([ijk_to_model(c, grid) for c in box_ijk])
        box = torch.tensor(np.concatenate([corners.min(0), corners.max(0)]), dtype=torch.float32)
    result = zoom_out_zoom_in(
        model, image, text=text, points=points, labels=None if labels is None else torch.tensor(labels),
        box=box, **options,
    )
    logits = result.logits.cpu().numpy().transpose(2, 1, 0)
    return from_working_grid(np.ascontiguousarray(logits), grid, order=1), result
