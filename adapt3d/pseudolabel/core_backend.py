"""The ``core`` backend: keyframe → click prompts for a SAM-Med3D-format core (frozen or adapted).

For each class and each gap between consecutive keyframes (and before the first / after the
last), the keyframes bounding the gap give the prompts:

* a positive click at the deepest point (2D, in mm, 4-connected largest component) of the
  class's region on each bounding keyframe that holds it;
* with ``negatives``, a negative click at the deepest point of a ring of ``margin`` voxels of
  keyframe background around that region.

One 3D crop (the core's input cube, :class:`~adapt3d.infer.CropPredictor`) centred between the
positive clicks is predicted with all of them, positives first; when they do not all fit in one
crop, each keyframe's clicks get their own crop centred on its positive click. The probabilities
of the gap's slices are the mean over the crops that cover each voxel; voxels no crop covers get
probability 0 (as SAM-Med3D pastes a crop's prediction into an empty volume). A gap whose
bounding keyframes both lack the class is predicted empty.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from torch import nn

from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import from_working_grid
from adapt3d.errors import ConfigError
from adapt3d.infer.predictor import CropPredictor
from adapt3d.infer.session import guess_modality
from adapt3d.prompts.clicks import first_click
from adapt3d.pseudolabel.backends import PSEUDOLABEL_BACKENDS, Backend, Probabilities, Resources
from adapt3d.pseudolabel.keyframes import SparseLabel, slab

Point = tuple[float, float, float]
Clicks = list[tuple[Point, int]]  # (input voxel i,j,k, SAM label 1/0); positive first
FAR_MM = 1e6  # spacing given to the slice axis so the deepest point is the in-plane one


def gaps(n_slices: int, keyframes: Sequence[int]) -> list[tuple[int | None, int | None, range]]:
    """``(keyframe before, keyframe after, slices strictly between)``; None beyond either end."""
    bounds = [None, *keyframes, None]
    out = []
    for before, after in itertools.pairwise(bounds):
        lo = 0 if before is None else before + 1
        hi = n_slices if after is None else after
        if hi > lo:
            out.append((before, after, range(lo, hi)))
    return out


def _deepest_in_slice(region: np.ndarray, axis: int, index: int, spacing: Sequence[float]) -> Point:
    """The deepest point of a 2D region on slice ``index``, as a 3D voxel position."""
    thin = np.expand_dims(region, axis)
    sp = [float(s) for s in spacing]
    sp[axis] = FAR_MM
    position = list(first_click(thin, spacing=sp).position)
    position[axis] = index
    return tuple(float(p) for p in position)  # type: ignore[return-value]


def keyframe_clicks(sparse: SparseLabel, index: int, class_id: int, spacing: Sequence[float], *, negatives: bool, margin: int) -> Clicks:
    """Clicks from one keyframe (module docstring); empty when the keyframe lacks the class."""
    region = sparse.keyframe(index, class_id)
    if not region.any():
        return []
    clicks: Clicks = [(_deepest_in_slice(region, sparse.axis, index, spacing), 1)]
    ring = ndimage.binary_dilation(region, iterations=margin) & ~region
    if negatives and ring.any():
        clicks.append((_deepest_in_slice(ring, sparse.axis, index, spacing), 0))
    return clicks


def _predict(predictor: CropPredictor, image: Volume, modality: str, groups: list[Clicks]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """(probability, coverage) of one crop holding every click of ``groups``; None if they do not fit."""
    clicks = sorted((c for g in groups for c in g), key=lambda c: -c[1])  # positives first
    centre = np.mean([p for p, label in clicks if label == 1], axis=0)
    prepared = predictor.prepare(image, modality, centre)
    size = predictor.core.image_size
    if any(np.any(prepared.to_crop(p) < 0) or np.any(prepared.to_crop(p) > size - 1) for p, _ in clicks):
        return None
    logits = predictor.run_clicks(prepared, [p for p, _ in clicks], [label for _, label in clicks])[-1]
    covered = prepared.window.paste(np.ones((size,) * 3, dtype=np.float32), prepared.working_shape)
    cover = from_working_grid(covered, prepared.grid, order=0) > 0.5
    return [(predictor.probability(prepared, logits), cover)]


def propagate_core(
    image: Volume,
    sparse: SparseLabel,
    classes: Mapping[str, int],
    *,
    core: nn.Module,
    modality: str | None = None,
    negatives: bool = True,
    margin: int = 3,
    target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
    normalization: str = "sam-med3d",
) -> Probabilities:
    """Propagate each class from the keyframes with ``core`` (module docstring)."""
    predictor = CropPredictor(core, target_spacing=target_spacing, normalization=normalization)
    modality = modality or guess_modality(image)
    out: Probabilities = {}
    for class_name, class_id in classes.items():
        clicks = {k: keyframe_clicks(sparse, k, class_id, image.spacing, negatives=negatives, margin=margin) for k in sparse.keyframes}
        total = np.zeros(image.shape, dtype=np.float32)
        count = np.zeros(image.shape, dtype=np.float32)
        for before, after, slices in gaps(sparse.n_slices, sparse.keyframes):
            groups = [clicks[k] for k in (before, after) if k is not None and clicks[k]]
            if not groups:
                continue
            crops = _predict(predictor, image, modality, groups)
            if crops is None:
                crops = [crop for g in groups for crop in _predict(predictor, image, modality, [g]) or []]
            gap = slab(sparse.axis, slice(slices.start, slices.stop))
            for prob, cover in crops:
                total[gap] += np.where(cover[gap], prob[gap], 0.0)
                count[gap] += cover[gap]
        out[class_name] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return out


def _load(resources: Resources) -> dict:
    from adapt3d.cores import core_spec
    from adapt3d.infer.session import load_model

    if resources.core is None:
        raise ConfigError("the 'core' pseudo-label backend needs --core CKPT (a SAM-Med3D-format checkpoint)")
    core = load_model(resources.core, core_type=resources.core_type, adapter=resources.adapter, device=resources.device)
    contract = core_spec(core).contract
    if contract.inference != "windows":
        raise ConfigError(f"the 'core' pseudo-label backend prompts crops by clicks (the windows inference); core "
                          f"{resources.core_type!r} predicts by {contract.inference or 'no whole-volume inference'}")
    prep = core.preprocessing  # resample and normalise as the core's checkpoint says
    return {"core": core, "target_spacing": prep.spacing, "normalization": prep.normalization}


PSEUDOLABEL_BACKENDS.register(
    "core",
    Backend(propagate_core, uses=("core", "adapter"), load_options=_load),
)
