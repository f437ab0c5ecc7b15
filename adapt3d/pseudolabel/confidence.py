"""From per-class probabilities to a pseudo-label map with an ignore label on uncertain voxels.

Rule, with the uncertain band ``(low, high)`` (default 0.3, 0.7; ``low <= 0.5 <= high``):

* the background probability is ``1 - max_c p_c``; the winner is the argmax over background and
  the classes (ties: background, then the first class in ``classes`` order);
* a class wins confidently when its probability is ``>= high``; background wins confidently when
  every class probability is ``<= low``; anything else is uncertain and becomes ``ignore``;
* keyframe voxels always keep their annotation (never ignored).

For one class this is: label 1 when ``p >= high``, 0 when ``p <= low``, ignore in between.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from adapt3d.data.imageio import Volume
from adapt3d.errors import ConfigError
from adapt3d.pseudolabel.backends import propagate
from adapt3d.pseudolabel.keyframes import IGNORE, SparseLabel, label_dtype

DEFAULT_BAND = (0.3, 0.7)


def check_band(band: tuple[float, float]) -> tuple[float, float]:
    """Validate an uncertain band: ``0 <= low <= 0.5 <= high <= 1``."""
    low, high = (float(b) for b in band)
    if not 0.0 <= low <= 0.5 <= high <= 1.0:
        raise ConfigError(f"uncertain band ({low}, {high}) must satisfy 0 <= low <= 0.5 <= high <= 1")
    return low, high


def fuse(
    probs: Mapping[str, np.ndarray],
    classes: Mapping[str, int],
    sparse: SparseLabel,
    *,
    band: tuple[float, float] = DEFAULT_BAND,
    ignore: int = IGNORE,
) -> np.ndarray:
    """The pseudo-label map (module docstring); classes missing from ``probs`` have probability 0."""
    low, high = check_band(band)
    if ignore in classes.values():
        raise ConfigError(f"ignore id {ignore} is also a class id; choose an id above every class")
    ids = [classes[name] for name in classes if name in probs]
    dtype = label_dtype(max([ignore, *ids]))
    out = np.zeros(sparse.label.shape, dtype=dtype)
    if ids:
        stack = np.stack([probs[name] for name in classes if name in probs])
        best = stack.argmax(axis=0)
        top = np.take_along_axis(stack, best[None], axis=0)[0]
        foreground = top > 1.0 - top
        out[foreground] = np.asarray(ids, dtype=dtype)[best[foreground]]
        uncertain = np.where(foreground, top < high, top > low)
        out[uncertain] = ignore
    known = sparse.known
    out[known] = sparse.label[known]
    return out


def make_pseudolabel(
    image: Volume,
    sparse: SparseLabel,
    classes: Mapping[str, int],
    /,
    *,
    backend: str,
    band: tuple[float, float] = DEFAULT_BAND,
    ignore: int = IGNORE,
    **options,
) -> np.ndarray:
    """Propagate the keyframes with ``backend`` and fuse the probabilities into a pseudo-label map."""
    return fuse(propagate(backend, image, sparse, classes, **options), classes, sparse, band=band, ignore=ignore)
