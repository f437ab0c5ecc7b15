"""Sparse labels: a few annotated keyframe slices of a volume, every other voxel unlabelled.

A :class:`SparseLabel` is the label array (class ids on the keyframes, 0 elsewhere) plus the
slice axis and the keyframe indices; ``known`` is the boolean mask of annotated voxels. On disk
an unlabelled voxel holds :data:`IGNORE` (255) in a uint8 label volume.

Keyframe placement (exact, see :func:`select_keyframes`):

* ``every=K``: every K-th slice over the whole volume, the grid centred so that the first and
  last keyframes are equally far from the volume's ends (as nnU-Net's sparse-slice simulation,
  but symmetric): start ``((n - 1) % K) // 2``.
* ``count=N``: N keyframes at the centres of N equal bins of the slices that hold foreground
  (an annotator places keyframes on the object); the whole volume when there is none.

Default slice axis (:func:`auto_axis`): among the axes whose voxel spacing is within 10% of the
largest, the one with the fewest slices; ties go to the last axis. So the thick-slice axis of an
anisotropic volume, and the shortest axis of an isotropic one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adapt3d.errors import ConfigError, InputError

IGNORE = 255  #: label value of an unlabelled (or uncertain) voxel on disk
SPACING_TIE = 1.1  #: spacings within this factor of the largest count as the thick-slice axes


def slab(axis: int, index: int | slice) -> tuple[slice | int, ...]:
    """Index tuple selecting slice(s) ``index`` along ``axis`` of a 3D array."""
    return tuple(index if a == axis else slice(None) for a in range(3))


def auto_axis(shape: Sequence[int], spacing: Sequence[float]) -> int:
    """The default slice axis (module docstring): thickest spacing, then fewest slices, then last."""
    sp = np.asarray(spacing, dtype=float)
    thick = [a for a in range(3) if sp[a] * SPACING_TIE >= sp.max()]
    return min(thick, key=lambda a: (shape[a], -a))


def check_spacing(every: int | None, count: int | None) -> None:
    """Exactly one of ``every`` (>= 2) and ``count`` (>= 1), else :class:`ConfigError`."""
    if (every is None) == (count is None):
        raise ConfigError("give exactly one of keyframes (a count N) or every (a spacing K)")
    if every is not None and every < 2:
        raise ConfigError(f"every must be at least 2 slices (every {every} leaves nothing to propagate)")
    if count is not None and count < 1:
        raise ConfigError(f"keyframes must be at least 1, got {count}")


def select_keyframes(
    n_slices: int, *, every: int | None = None, count: int | None = None, span: tuple[int, int] | None = None
) -> tuple[int, ...]:
    """Keyframe slice indices: every ``every``-th slice, or ``count`` evenly spaced in ``span``.

    ``span`` (first, last slice, inclusive) is used with ``count`` only; default the whole volume.
    """
    check_spacing(every, count)
    if every is not None:
        return tuple(range(((n_slices - 1) % every) // 2, n_slices, every))
    first, last = span if span is not None else (0, n_slices - 1)
    width = last - first + 1
    return tuple(sorted({first + int(np.floor((i + 0.5) * width / count)) for i in range(count)}))  # type: ignore[operator]


@dataclass(frozen=True)
class SparseLabel:
    """Class ids on the keyframe slices along ``axis``; every other voxel is unlabelled."""

    label: np.ndarray  # integer class ids; 0 outside the keyframes
    axis: int
    keyframes: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.label.ndim != 3 or self.axis not in (0, 1, 2):
            raise ValueError(f"need a 3D label and an axis 0-2, got shape {self.label.shape}, axis {self.axis}")
        n = self.label.shape[self.axis]
        if not self.keyframes or list(self.keyframes) != sorted(set(self.keyframes)) or not 0 <= self.keyframes[0] <= self.keyframes[-1] < n:
            raise ValueError(f"keyframes must be sorted, unique, non-empty slice indices below {n}: {self.keyframes}")

    @property
    def n_slices(self) -> int:
        return int(self.label.shape[self.axis])

    @property
    def known(self) -> np.ndarray:
        """Boolean mask of the annotated voxels (the keyframe slices)."""
        known = np.zeros(self.label.shape, dtype=bool)
        known[slab(self.axis, list(self.keyframes))] = True  # type: ignore[index]
        return known

    def keyframe(self, index: int, class_id: int) -> np.ndarray:
        """2D boolean mask of class ``class_id`` on keyframe slice ``index``."""
        return self.label[slab(self.axis, index)] == class_id

    def present(self, class_id: int) -> bool:
        """Whether any keyframe holds class ``class_id``."""
        return bool(np.any(self.label[slab(self.axis, list(self.keyframes))] == class_id))  # type: ignore[index]

    def to_ignore(self, ignore: int = IGNORE) -> np.ndarray:
        """The on-disk form: class ids on the keyframes, ``ignore`` elsewhere."""
        out = np.full(self.label.shape, ignore, dtype=label_dtype(max(ignore, int(self.label.max(initial=0)))))
        known = self.known
        out[known] = self.label[known]
        return out


def label_dtype(max_id: int) -> type:
    """uint8 when every id fits, else uint16."""
    if max_id > 65535:
        raise ConfigError(f"label id {max_id} does not fit in a uint16 label volume")
    return np.uint8 if max_id <= 255 else np.uint16


def sparsify(label: np.ndarray, *, axis: int, every: int | None = None, count: int | None = None) -> SparseLabel:
    """Keep only the keyframes of a fully labelled volume (see the module docstring for placement)."""
    label = np.asarray(label)
    span = None
    if count is not None:
        slices = np.flatnonzero(np.any(label > 0, axis=tuple(a for a in range(3) if a != axis)))
        span = (int(slices[0]), int(slices[-1])) if slices.size else None
    keyframes = select_keyframes(label.shape[axis], every=every, count=count, span=span)
    known = np.zeros(label.shape, dtype=bool)
    known[slab(axis, list(keyframes))] = True  # type: ignore[index]
    return SparseLabel(np.where(known, label, 0).astype(label.dtype), axis, keyframes)


def whole_slice_axes(known: np.ndarray) -> list[int]:
    """Axes along which ``known`` is a union of whole slices (each slice all known or all unknown)."""
    axes = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        if np.array_equal(known.all(axis=other), known.any(axis=other)):
            axes.append(axis)
    return axes


def sparse_from_ignore(array: np.ndarray, *, axis: int | None = None, ignore: int = IGNORE, where: str = "label") -> SparseLabel:
    """Read a user's sparse annotation: ``ignore`` marks unlabelled voxels; labelled ones fill whole slices.

    ``axis`` None finds the axis along which the labelled voxels form whole slices.
    """
    array = np.asarray(array)
    known = array != ignore
    if not known.any():
        raise InputError(f"{where}: every voxel is {ignore} (unlabelled); annotate at least one keyframe slice")
    if known.all():
        raise InputError(f"{where}: no voxel is {ignore}; this is a full label, not a sparse one")
    axes = whole_slice_axes(known)
    if axis is None:
        if not axes:
            raise InputError(f"{where}: labelled voxels do not form whole slices along any axis (each keyframe slice must be fully annotated)")
        axis = axes[0]
    elif axis not in axes:
        raise InputError(f"{where}: labelled voxels do not form whole slices along axis {axis}")
    other = tuple(a for a in range(3) if a != axis)
    keyframes = tuple(int(i) for i in np.flatnonzero(known.all(axis=other)))
    return SparseLabel(np.where(known, array, 0), axis, keyframes)
