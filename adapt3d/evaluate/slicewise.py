"""Slice-wise N-click evaluation of a 2D core (SAM) on 3D volumes, scored exactly like the 3D protocol.

Geometry. The case is reoriented to RAS at its own spacing (no resampling) and cut into slices
along ``slice_axis`` (RAS index: 0 sagittal, 1 coronal, 2 axial = default). A slice is shown as
viewers show it: rows run along the second in-plane RAS axis from high to low (anterior or
superior at the top), columns along the first. Pixels keep their aspect (as SAM and MedSAM use
slices); the longest side is resized to the core's input size (bilinear, antialiased when
shrinking) and the rest zero-padded bottom/right after normalisation — SAM's ResizeLongestSide.

Intensity. CT is windowed to [-160, 240] HU, other modalities to their 0.5–99.5 percentiles over
the whole volume (one scaling for every slice), mapped to [0, 255], replicated to 3 channels and
normalised with SAM's pixel mean/std.

Clicks ("the 3D clicks projected to slices"). Every slice that contains the object runs its own
k-click protocol with the same click simulator as the 3D protocol, on the slice's pixels: the
first click at the deepest point of the slice's object, each next one at the deepest point of
the largest 2D error region (4-connected, positive for a miss, negative for a false positive) of
that slice's current prediction, distances in mm of the in-plane spacing. The simulator is the 3D
one applied to a one-voxel-thick slab whose through-plane spacing is so large that it never
limits a depth. Click positions go to the model as SamPredictor maps them (scaled by the resize
factors). Before the first click no mask is fed (SAM's convention) and the first, single-click
prediction takes the multimask output with the highest predicted IoU; afterwards the previous
low-res logits are fed back and the single-mask output is used.

So N clicks means N clicks *per slice*: an object on S slices may take up to N·S clicks. The
per-case record's ``clicks_used`` counts the clicks actually placed (a slice whose prediction is
already exact takes no more), so reports can state how many more clicks 2D needs than 3D.
Slices without the object get no click and an empty prediction: the protocol knows which slices
hold the object (an advantage of the 2D baseline that comparisons must state).

Prediction. Slices are predicted independently (low-res logits upsampled to the input size,
padding removed, resized to the slice, > 0), stacked, mapped back to the input grid and scored
there (Dice, NSD in mm) exactly as :mod:`adapt3d.evaluate.nclick` scores 3D predictions; the
EVAL record has the same layout, plus ``clicks_used`` per case and a ``protocol`` entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from adapt3d.cores.sam2d.model import preprocess
from adapt3d.data.items import Item, PreparedCase, prepare_case
from adapt3d.data.preprocess import from_working_grid
from adapt3d.evaluate.nclick import CaseResult, Protocol, evaluate_each
from adapt3d.prompts.clicks import CLICK_SIMULATORS, Click, ClickSimulator
from adapt3d.prompts.loop import ClickLoop

#: RAS axis index of each slice orientation.
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
CT_WINDOW_HU = (-160.0, 240.0)
PERCENTILES = (0.5, 99.5)
#: Through-plane "spacing" (mm) of the one-voxel slab handed to the 3D click simulator.
_SLAB_MM = 1e6


@dataclass(frozen=True)
class SlicewiseProtocol(Protocol):
    """The N-click protocol run on every slice along RAS axis ``slice_axis`` (0 sag., 1 cor., 2 ax.)."""

    slice_axis: int = 2

    def __post_init__(self) -> None:
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (RAS sagittal, coronal, axial), got {self.slice_axis!r}")


def slice_axis_index(value: int | str) -> int:
    """RAS axis index of ``value``: 0/1/2 or sagittal/coronal/axial."""
    text = str(value).strip().lower()
    if text in SLICE_AXES:
        return SLICE_AXES[text]
    if text in ("0", "1", "2"):
        return int(text)
    raise ValueError(f"slice axis {value!r}: expected axial, coronal, sagittal or a RAS axis 0, 1, 2")


def display_range(volume: np.ndarray, modality: str) -> np.ndarray:
    """Intensities mapped to [0, 255]: CT through [-160, 240] HU, else the volume's 0.5–99.5 percentiles."""
    lo, hi = CT_WINDOW_HU if modality == "CT" else (float(v) for v in np.percentile(volume, PERCENTILES))
    scaled = (np.clip(volume, lo, hi) - lo) / ((hi - lo) or 1.0) * 255.0
    return scaled.astype(np.float32)


def _display(plane: np.ndarray) -> np.ndarray:
    """An (a0, a1) plane as an image: rows along a1 from high to low, columns along a0."""
    return np.flipud(plane.T)


def _undisplay(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_display`."""
    return np.flipud(image).T


@dataclass(frozen=True)
class SliceFrame:
    """An (h, w) slice inside the model's S×S input: longest side resized to S, then padded."""

    h: int
    w: int
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        scale = self.size / max(self.h, self.w)
        return int(self.h * scale + 0.5), int(self.w * scale + 0.5)

    def image(self, pixels: np.ndarray, device: torch.device) -> torch.Tensor:
        """Normalised, padded (1, 3, S, S) model input of an (h, w) slice in [0, 255]."""
        nh, nw = self.resized
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None].to(device)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < self.h)
        return preprocess(x.expand(1, 3, nh, nw), self.size)

    def point(self, position: Sequence[int]) -> list[float]:
        """A slice pixel (row, col) in model-input pixels, scaled as SamPredictor scales clicks."""
        nh, nw = self.resized
        return [position[0] * nh / self.h, position[1] * nw / self.w]

    def mask(self, low_res_logits: torch.Tensor) -> np.ndarray:
        """(h, w) boolean mask from (1, 1, S/4, S/4) logits: upsample, unpad, resize, > 0."""
        nh, nw = self.resized
        full = F.interpolate(low_res_logits.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        logits = F.interpolate(full[..., :nh, :nw], size=(self.h, self.w), mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).cpu().numpy()


def _slice_click(
    simulate: ClickSimulator, pred: np.ndarray | None, gt: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float]
) -> Click | None:
    """The 3D click simulator on a one-pixel-thick slab of the slice; position (row, col, 0)."""
    slab = None if pred is None else pred[..., None]
    return simulate(slab, gt[..., None], rng=rng, spacing=(*spacing, _SLAB_MM))


@torch.no_grad()
def segment_slice(
    model: nn.Module,
    pixels: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, float],
    protocol: Protocol,
    rng: np.random.Generator,
) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """(h, w) masks after each requested click count on one slice, and the clicks placed by then."""
    simulate = CLICK_SIMULATORS.get(protocol.simulator)
    device = next(model.parameters()).device
    frame = SliceFrame(*gt.shape, model.image_size)
    loop = ClickLoop(model, model.encode(frame.image(pixels, device)), start=None)
    clicks: list[Click] = []
    pred = None
    masks, used = {}, {}
    for k in range(1, max(protocol.clicks) + 1):
        nxt = _slice_click(simulate, pred, gt, rng, spacing)
        if nxt is not None:
            clicks.append(nxt)
        pts = torch.tensor([[frame.point(c.position) for c in clicks]], dtype=torch.float32, device=device)
        labels = torch.tensor([[c.label for c in clicks]], dtype=torch.int64, device=device)
        loop.step(pts, labels, multimask_output=loop.logits is None)
        pred = frame.mask(loop.keep(int(loop.iou[0].argmax())))  # the best of the first click's three masks
        if k in protocol.clicks:
            masks[k], used[k] = pred, len(clicks)
    return masks, used


def segment_item_slicewise(
    model: nn.Module, prepared: PreparedCase, item: Item, modality: str, protocol: SlicewiseProtocol
) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Input-grid boolean masks after each requested number of clicks per slice; clicks used in total.

    ``prepared`` must be on the RAS grid at the input spacing (``prepare_case(..., None)``).
    """
    axis = protocol.slice_axis
    gt = prepared.label == item.class_id
    pixels = display_range(prepared.image, modality)
    plane_axes = [a for a in range(3) if a != axis]
    spacing = (prepared.grid.spacing[plane_axes[1]], prepared.grid.spacing[plane_axes[0]])
    stacks = {k: np.zeros(gt.shape, dtype=bool) for k in protocol.clicks}
    used = dict.fromkeys(protocol.clicks, 0)
    slices = np.flatnonzero(gt.any(axis=tuple(plane_axes)))
    for index in tqdm(slices, desc=f"{item.key} slices", disable=None, leave=False):
        rng = np.random.default_rng([protocol.seed, *item.key.encode(), axis, int(index)])
        gt_slice = _display(np.take(gt, index, axis=axis))
        image = _display(np.take(pixels, index, axis=axis))
        masks, counts = segment_slice(model, image, gt_slice, spacing, protocol, rng)
        where = tuple(int(index) if a == axis else slice(None) for a in range(3))
        for k in protocol.clicks:
            stacks[k][where] = _undisplay(masks[k])
            used[k] += counts[k]
    back = {k: from_working_grid(s.astype(np.uint8), prepared.grid, order=0).astype(bool) for k, s in stacks.items()}
    return back, used


def as_slicewise(protocol: Protocol) -> SlicewiseProtocol:
    """``protocol`` itself, or a plain :class:`Protocol` with the default (axial) slice axis."""
    if isinstance(protocol, SlicewiseProtocol):
        return protocol
    return SlicewiseProtocol(**dataclasses.asdict(protocol))


def evaluate_slicewise(
    model: nn.Module,
    items: Sequence[Item],
    modality: str,
    protocol: Protocol,
    *,
    predictions_dir: Path | None = None,
    run_dir: Path | None = None,
    desc: str | None = None,
) -> dict:
    """Run the slice-wise protocol on ``items``: the EVAL record of the run schema, like ``evaluate_items``."""
    protocol = as_slicewise(protocol)

    def segment(item: Item) -> CaseResult:
        prepared = prepare_case(item.case, modality, None)
        masks, used = segment_item_slicewise(model, prepared, item, modality, protocol)
        clicks_used = {str(k): n for k, n in used.items()}
        return masks, prepared.input_label == item.class_id, prepared.input_image, {"clicks_used": clicks_used}

    record = evaluate_each(
        model, items, segment, protocol, desc=desc or "evaluate (slice-wise)", predictions_dir=predictions_dir,
        run_dir=run_dir,
    )
    plane = next(name for name, a in SLICE_AXES.items() if a == protocol.slice_axis)
    return {
        **record,
        "protocol": {"name": "slicewise", "slice_axis": protocol.slice_axis, "plane": plane, "clicks_per": "slice"},
    }
