"""The challenge predictor: one step's npz keys (imgs, spacing, boxes, clicks, ...) → ``segs``.

How each kind of model uses the prompts is a registered *strategy* (by core name, plus the
``box-fill`` baseline); the strategy's ``description`` goes into every protocol record and report:

* ``sam-med3d``: SAM-Med3D (turbo) has no box embeddings, so the box becomes clicks: a foreground
  click at the centre of the 2D box on slice ``z_mid``; the core's crop is centred on the 3D box
  centre; the prediction is cut to the box's slice range ``z_min..z_max`` (which the challenge's
  box gives exactly). Then every click of ``clicks_order`` in order, the low-res logits fed back
  from click to click as in SAM-Med3D's interactive use. ``prev_pred`` is not used (all clicks are
  replayed). Without a box, the crop is centred on the first foreground click.
* ``segvol``: SegVol takes the box natively (its 3D box: slices ``z_min..z_max``, the mid-slice
  2D box in-plane) plus all clicks, zoom-out-zoom-in.
* ``box-fill``: a trivial baseline, no model: every class is its box (mid-slice 2D box over
  ``z_min..z_max``); clicks are ignored.

Classes are merged as the challenge needs one label map: each voxel takes the class of highest
probability among those above 0.5 (list order breaks ties). Class ``i`` (0-based list position)
is written as label ``i + 1``. Array coordinates are (z, y, x); the image is read as a volume
with SimpleITK's identity direction (LPS) and the spacing the file stores in (x, y, z).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from adapt3d.cores.registry import core_spec
from adapt3d.data.cvpr_npz import BOX_KEYS
from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import centred_window, normalise
from adapt3d.errors import InputError
from adapt3d.prompts.loop import ClickLoop
from adapt3d.registry import Registry


@dataclass
class ClassPrompt:
    """One class's prompts: its box (or None) and its clicks in the order they were given."""

    box: dict | None
    clicks: list[tuple[tuple[int, int, int], bool]]  # ((z, y, x), foreground)

    def box_click(self) -> tuple[int, int, int] | None:
        """The centre of the 2D box on the mid slice, (z, y, x)."""
        b = self.box
        if b is None:
            return None
        return b["z_mid"], (b["z_mid_y_min"] + b["z_mid_y_max"]) // 2, (b["z_mid_x_min"] + b["z_mid_x_max"]) // 2

    def box_centre(self) -> tuple[float, float, float] | None:
        b = self.box
        if b is None:
            return None
        return (b["z_min"] + b["z_max"]) / 2, (b["z_mid_y_min"] + b["z_mid_y_max"]) / 2, (b["z_mid_x_min"] + b["z_mid_x_max"]) / 2


def class_prompts(inputs: dict) -> list[ClassPrompt]:
    """Per class (list order) its box and ordered clicks, from the npz keys of one step."""
    boxes, clicks, order = inputs.get("boxes"), inputs.get("clicks"), inputs.get("clicks_order")
    n = len(boxes) if boxes is not None else len(clicks) if clicks is not None else 0
    if clicks is not None and len(clicks) != n:
        raise InputError(f"'clicks' has {len(clicks)} classes but 'boxes' has {n}")
    prompts = []
    for i in range(n):
        box = None if boxes is None else _box(boxes[i])
        seq: list[tuple[tuple[int, int, int], bool]] = []
        if clicks is not None:
            entry = clicks[i]
            if not isinstance(entry, dict):
                raise InputError("each 'clicks' entry must be a dict {'fg': [...], 'bg': [...]}")
            left = {k: [_point(p) for p in entry.get(k, [])] for k in ("fg", "bg")}
            kinds = [] if order is None else [str(k) for k in order[i] if k is not None and str(k) in left]
            for kind in kinds:
                if left[kind]:
                    seq.append((left[kind].pop(0), kind == "fg"))
            seq += [(p, True) for p in left["fg"]] + [(p, False) for p in left["bg"]]  # unordered leftovers
        prompts.append(ClassPrompt(box, seq))
    return prompts


def _box(entry: object) -> dict:
    if not isinstance(entry, dict) or any(k not in entry for k in BOX_KEYS):
        raise InputError(f"each 'boxes' entry must be a dict with {', '.join(BOX_KEYS)}")
    return {k: int(entry[k]) for k in BOX_KEYS}


def _point(p: object) -> tuple[int, int, int]:
    values = np.asarray(p).ravel()
    if values.size != 3:
        raise InputError(f"a click must be three coordinates (z, y, x), got {p!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def npz_volume(imgs: np.ndarray, spacing: Sequence[float]) -> Volume:
    """The (z, y, x) image as a volume (i, j, k) = (x, y, z), identity direction (LPS), origin 0."""
    sx, sy, sz = (float(s) for s in spacing)
    return Volume(np.ascontiguousarray(np.asarray(imgs).transpose(2, 1, 0)).astype(np.float32), np.diag([-sx, -sy, sz, 1.0]))


# -- the npz image on a core's working grid, crop by crop ---------------------------------------
@dataclass(frozen=True)
class NpzGrid:
    """The npz image (z, y, x) on a core's RAS working grid (i, j, k) = (x, y flipped; z) × spacing /
    target — the grid ``to_working_grid`` gives for the :func:`npz_volume` — sampled one crop at a
    time, so a large image is never resampled whole (same interpolation: linear, edge-clamped)."""

    shape: tuple[int, int, int]  # (z, y, x)
    zoom: np.ndarray  # (x, y, z): spacing / target
    working_shape: tuple[int, int, int]  # (i, j, k)

    @classmethod
    def of(cls, shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> NpzGrid:
        zoom = np.asarray(spacing, dtype=float) / np.asarray(target, dtype=float)
        n = np.asarray(shape[::-1], dtype=float)
        return cls(tuple(int(v) for v in shape), zoom, tuple(max(1, int(round(a * z))) for a, z in zip(n, zoom)))  # type: ignore[arg-type]

    def _flip(self) -> np.ndarray:
        return np.array([self.shape[2] - 1, self.shape[1] - 1, 0], dtype=float)

    def to_working(self, zyx: Sequence[float]) -> np.ndarray:
        """Array coordinates (z, y, x) → working coordinates (i, j, k)."""
        x, y, z = (float(v) for v in zyx[::-1])
        return np.array([self._flip()[0] - x, self._flip()[1] - y, z]) * self.zoom

    def crop(self, imgs: np.ndarray, start: Sequence[int], size: int) -> np.ndarray:
        """The working-grid cube at ``start`` (zero outside the working grid)."""
        scale = 1.0 / self.zoom
        matrix = np.array([[0, 0, scale[2]], [0, -scale[1], 0], [-scale[0], 0, 0]])  # (z, y, x) from (i, j, k)
        offset = np.array([start[2] * scale[2], self._flip()[1] - start[1] * scale[1], self._flip()[0] - start[0] * scale[0]])
        out = ndimage.affine_transform(np.asarray(imgs, dtype=np.float32), matrix, offset=offset, output_shape=(size,) * 3,
                                       order=1, mode="nearest", prefilter=False)
        for axis, (s, n) in enumerate(zip(start, self.working_shape)):
            idx = np.arange(size) + s
            out[(slice(None),) * axis + (~((idx >= 0) & (idx < n)),)] = 0
        return out

    def paste(self, crop: np.ndarray, start: Sequence[int]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The crop mapped back onto the array (z, y, x): the region it covers and its values there."""
        size = crop.shape[0]
        lo_w, hi_w = np.asarray(start, dtype=float) - 1, np.asarray(start, dtype=float) + size
        corners = [self._from_working(w) for w in (lo_w, hi_w)]
        lo = np.maximum(np.floor(np.minimum(*corners)).astype(int), 0)
        hi = np.minimum(np.ceil(np.maximum(*corners)).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return (slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32)
        for axis, (s, n) in enumerate(zip(start, self.working_shape)):  # beyond the working grid: its edge value
            crop = np.take(crop, np.clip(np.clip(np.arange(size) + s, 0, n - 1) - s, 0, size - 1), axis=axis)
        matrix = np.array([[0, 0, -self.zoom[0]], [0, -self.zoom[1], 0], [self.zoom[2], 0, 0]])  # (i, j, k) from (z, y, x)
        offset = np.array([self._flip()[0] * self.zoom[0], self._flip()[1] * self.zoom[1], 0]) - np.asarray(start) + matrix @ lo
        values = ndimage.affine_transform(crop.astype(np.float32), matrix, offset=offset, output_shape=tuple(hi - lo),
                                          order=1, mode="grid-constant", cval=0.0, prefilter=False)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), values

    def _from_working(self, ijk: np.ndarray) -> np.ndarray:
        x, y, z = self._flip()[0] - ijk[0] / self.zoom[0], self._flip()[1] - ijk[1] / self.zoom[1], ijk[2] / self.zoom[2]
        return np.array([z, y, x])


# -- strategies --------------------------------------------------------------------------------
#: One class's prediction: the array region it covers and the probabilities there (None: nothing).
Region = tuple[tuple[slice, ...], np.ndarray] | None


@dataclass(frozen=True)
class Strategy:
    """How a model turns each class's prompts into a probability region of the (z, y, x) array."""

    description: str
    predict: Callable[..., list[Region]]  # (model, imgs, spacing, prompts, modality, settings)


STRATEGIES: Registry[Strategy] = Registry("challenge prompt strategy")


def _cut_to_slices(region: tuple[tuple[slice, ...], np.ndarray], box: dict | None) -> Region:
    slices, prob = region
    if box is not None:
        z = np.arange(slices[0].start, slices[0].stop)
        prob[(z < box["z_min"]) | (z > box["z_max"])] = 0
    return slices, prob


def _sam_probs(model: nn.Module, imgs: np.ndarray, spacing: Sequence[float], prompts: list[ClassPrompt], modality: str,
               settings: dict) -> list[Region]:
    grid = NpzGrid.of(imgs.shape, spacing, settings["target_spacing"])
    size, device = model.image_size, next(model.parameters()).device
    out: list[Region] = []
    for prompt in prompts:
        first = prompt.box_click()
        clicks = ([(first, True)] if first is not None else []) + prompt.clicks
        positives = [p for p, fg in clicks if fg]
        if not positives:
            out.append(None)
            continue
        window = centred_window(grid.to_working(prompt.box_centre() or positives[0]), size)
        pts, labels = [], []
        for p, fg in clicks:
            c = np.round(grid.to_working(p) - np.asarray(window.start))
            if np.all(c >= 0) and np.all(c <= size - 1):
                pts.append(c), labels.append(int(fg))
        if 1 not in labels:
            out.append(None)
            continue
        crop = normalise(grid.crop(imgs, window.start, size), modality, settings["normalization"])
        emb = model.encode(torch.from_numpy(crop)[None, None].to(device))
        p_t = torch.tensor(np.stack(pts)[None], dtype=torch.float32, device=device)
        l_t = torch.tensor([labels], dtype=torch.int64, device=device)
        loop = ClickLoop(model, emb)
        for n in range(1, len(pts) + 1):
            loop.step(p_t[:, :n], l_t[:, :n])
        full = torch.sigmoid(loop.upsampled())
        out.append(_cut_to_slices(grid.paste(full[0, 0].cpu().numpy(), window.start), prompt.box))
    return out


def _segvol_probs(model: nn.Module, imgs: np.ndarray, spacing: Sequence[float], prompts: list[ClassPrompt], modality: str,
                  settings: dict) -> list[Region]:
    from adapt3d.cores.segvol.zoom import segment_volume

    volume = npz_volume(imgs, spacing)
    out: list[Region] = []
    for prompt in prompts:
        b = prompt.box
        box_ijk = None if b is None else [(b["z_mid_x_min"], b["z_mid_y_min"], b["z_min"]), (b["z_mid_x_max"], b["z_mid_y_max"], b["z_max"])]
        if box_ijk is None and not any(fg for _, fg in prompt.clicks):
            out.append(None)
            continue
        points = [p[::-1] for p, _ in prompt.clicks] or None
        labels = [int(fg) for _, fg in prompt.clicks] or None
        logits, _ = segment_volume(model, volume, points_ijk=points, labels=labels, box_ijk=box_ijk, modality=modality or "CT")
        prob = torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits.transpose(2, 1, 0)))).numpy()
        out.append(((slice(None),) * 3, prob))
    return out


def _box_fill(model: nn.Module | None, imgs: np.ndarray, spacing: Sequence[float], prompts: list[ClassPrompt], modality: str,
              settings: dict) -> list[Region]:
    out: list[Region] = []
    for prompt in prompts:
        b = prompt.box
        if b is None:
            out.append(None)
            continue
        region = (slice(b["z_min"], b["z_max"] + 1), slice(b["z_mid_y_min"], b["z_mid_y_max"] + 1), slice(b["z_mid_x_min"], b["z_mid_x_max"] + 1))
        out.append((region, np.ones([s.stop - s.start for s in region], dtype=np.float32)))
    return out


STRATEGIES.register("windows", Strategy(  # cores whose contract predicts by windows (SAM-Med3D)
    "box → clicks (SAM-Med3D has no box embeddings): a foreground click at the centre of the mid-slice 2D box, the crop "
    "centred on the 3D box centre, the prediction cut to slices z_min..z_max; then the challenge's clicks in order, "
    "low-res logits fed back click to click; prev_pred not used", _sam_probs))
STRATEGIES.register("zoom", Strategy(  # cores predicting by zoom-out-zoom-in (SegVol)
    "native 3D box (z_min..z_max × the mid-slice 2D box) plus all clicks, zoom-out-zoom-in; prev_pred not used", _segvol_probs))
STRATEGIES.register("box-fill", Strategy(
    "trivial baseline, no model: each class is its box (mid-slice 2D box over z_min..z_max); clicks ignored", _box_fill))


def _core_strategy(model: nn.Module) -> str:
    """The challenge strategy of a core: its contract's whole-volume inference."""
    spec = core_spec(model)
    if spec.contract.inference not in STRATEGIES:
        raise InputError(f"core {spec.name!r} has no challenge prompt strategy; valid: {', '.join(STRATEGIES.names())}")
    return spec.contract.inference


def merge(regions: list[Region], shape: tuple[int, ...]) -> np.ndarray:
    """One uint8 label map: per voxel the class (i + 1) of highest probability among those > 0.5."""
    segs = np.zeros(shape, dtype=np.uint8)
    best = np.full(shape, 0.5, dtype=np.float32)
    for i, region in enumerate(regions):
        if region is None:
            continue
        slices, prob = region
        win = prob > best[slices]
        segs[slices][win] = i + 1
        best[slices][win] = prob[win]
    return segs


class NpzPredictor:
    """Predicts ``segs`` for the challenge's step inputs; one model (and its adapters) for all files."""

    def __init__(self, model: nn.Module | None, *, strategy: str | None = None, routes: dict[str, str] | None = None,
                 target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5), normalization: str = "sam-med3d") -> None:
        if strategy is None and model is None:
            raise InputError("a challenge predictor needs a model or a strategy name (e.g. box-fill)")
        name = strategy or _core_strategy(model)
        self.name = name
        self.strategy = STRATEGIES.get(name)
        self.model = model
        self.settings = {"target_spacing": tuple(float(s) for s in target_spacing), "normalization": normalization}
        self.router = None
        if routes:
            from adapt3d.tuners import ModalityRouter

            self.router = ModalityRouter(model, routes)

    @property
    def description(self) -> str:
        return f"{self.name}: {self.strategy.description}"

    def adapter_for(self, modality: str) -> str | None:
        return None if self.router is None else self.router.adapter_for(modality)

    @torch.no_grad()
    def __call__(self, inputs: dict, modality: str = "") -> np.ndarray:
        imgs = np.asarray(inputs["imgs"])
        prompts = class_prompts(inputs)
        spacing = tuple(float(v) for v in np.asarray(inputs["spacing"], dtype=float).ravel())
        route = self.router.route(modality) if self.router is not None else contextlib.nullcontext(self.model)
        with route as model:
            regions = self.strategy.predict(model, imgs, spacing, prompts, modality, self.settings)
        return merge(regions, imgs.shape)
