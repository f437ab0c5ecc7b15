"""Pseudo-label backends: the registry, the common :func:`propagate` entry and the ``nearest`` baseline.

A backend's ``propagate(image, sparse, classes, **options)`` returns a float32 foreground
probability volume per class. :func:`propagate` calls it only for the classes that some keyframe
holds (a class without an annotated voxel has no prompt: it is left out and counts as
probability 0 everywhere), checks the result and pins the keyframe voxels to their annotation
(probability exactly 1 or 0), so keyframes are always reproduced exactly.

``load_options`` turns the user's resources (checkpoint paths, device) into the backend's
options, so the CLI needs no per-backend code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from adapt3d.data.imageio import Volume
from adapt3d.errors import ConfigError
from adapt3d.registry import Registry
from adapt3d.pseudolabel.keyframes import SparseLabel, slab

PATH_RESOURCES = ("core", "adapter", "seggpt")
Probabilities = dict[str, np.ndarray]
PropagateFn = Callable[..., Probabilities]


@dataclass(frozen=True)
class Resources:
    """What a user hands to a backend by path (the CLI's ``--core``, ``--adapter``, ``--seggpt``)."""

    core: str | os.PathLike | None = None
    core_type: str = "sam-med3d"
    adapter: str | os.PathLike | None = None
    seggpt: str | os.PathLike | None = None
    device: str = "cpu"

    def given(self) -> set[str]:
        """Names of the path resources that are set."""
        return {name for name in PATH_RESOURCES if getattr(self, name) is not None}


@dataclass(frozen=True)
class Backend:
    """A registered backend: its propagation, the resources it uses and how they become options."""

    propagate: PropagateFn
    uses: tuple[str, ...] = ()
    load_options: Callable[[Resources], dict] = lambda resources: {}


PSEUDOLABEL_BACKENDS: Registry[Backend] = Registry("pseudo-label backend")


def backend_options(name: str, resources: Resources) -> dict:
    """Load what backend ``name`` needs from ``resources``; a resource it does not use is an error."""
    backend = PSEUDOLABEL_BACKENDS.get(name)
    unused = sorted(resources.given() - set(backend.uses))
    if unused:
        raise ConfigError(f"--{unused[0]} is not used by the {name!r} pseudo-label backend")
    return backend.load_options(resources)


def propagate(name: str, image: Volume, sparse: SparseLabel, classes: Mapping[str, int], /, **options) -> Probabilities:
    """Run backend ``name`` on the classes present in the keyframes; keyframe voxels pinned exactly."""
    present = {n: c for n, c in classes.items() if sparse.present(c)}
    if sparse.label.shape != image.shape:
        raise ValueError(f"sparse label shape {sparse.label.shape} differs from image shape {image.shape}")
    probs = PSEUDOLABEL_BACKENDS.get(name).propagate(image, sparse, present, **options) if present else {}
    if set(probs) != set(present):
        raise RuntimeError(f"backend {name!r} returned classes {sorted(probs)}, expected {sorted(present)}")
    frames = slab(sparse.axis, list(sparse.keyframes))
    out: Probabilities = {}
    for class_name, class_id in present.items():
        prob = np.clip(np.asarray(probs[class_name], dtype=np.float32), 0.0, 1.0)
        if prob.shape != image.shape:
            raise RuntimeError(f"backend {name!r} returned shape {prob.shape} for {class_name!r}, expected {image.shape}")
        prob[frames] = sparse.label[frames] == class_id  # type: ignore[index]
        out[class_name] = prob
    return out


def nearest_keyframes(n_slices: int, keyframes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """For each slice, its nearest keyframe, or both when two are equally near."""
    frames = np.asarray(keyframes)
    out = []
    for s in range(n_slices):
        dist = np.abs(frames - s)
        out.append(tuple(int(k) for k in frames[dist == dist.min()]))
    return out


def propagate_nearest(image: Volume, sparse: SparseLabel, classes: Mapping[str, int]) -> Probabilities:
    """Copy the nearest keyframe's mask into each slice; halfway between two, their mean (0.5 where they differ)."""
    out: Probabilities = {}
    nearest = nearest_keyframes(sparse.n_slices, sparse.keyframes)
    for class_name, class_id in classes.items():
        prob = np.zeros(sparse.label.shape, dtype=np.float32)
        for s, frames in enumerate(nearest):
            prob[slab(sparse.axis, s)] = np.mean([sparse.keyframe(k, class_id) for k in frames], axis=0)
        out[class_name] = prob
    return out


PSEUDOLABEL_BACKENDS.register("nearest", Backend(propagate_nearest))
