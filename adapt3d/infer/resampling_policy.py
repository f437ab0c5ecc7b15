"""Which working spacing a volume is resampled to before a SAM-Med3D-format core sees it.

The policy is an explicit setting (``resample`` + ``spacing``) and is recorded with every
prediction (:class:`ResamplingRecord`) so a report can state it. Spacings are in the RAS
(canonical) axis order the working grid uses. Trade-offs, for a 0.78×0.78×6.5 mm brain MRI:

``isotropic`` (default, ``spacing`` = 1.5 mm, the core's training spacing)
    Every axis to ``spacing``. Objects have the physical scale and shape the core was trained
    on, and a 128³ window covers 192 mm on every axis. The cost: the thick axis is upsampled
    ×4.3 by linear interpolation (no new information; slice-to-slice steps become ramps) and the
    in-plane 0.78 mm detail is averaged away; the working volume grows with the upsampling.
``inplane``
    The two finest axes to ``spacing``; the coarsest axis (ties: the last, usually the slice
    stack) keeps its own spacing. No interpolation across slices and a small working volume,
    but the core sees objects squashed along the slice axis (here by 6.5 / 1.5 = 4.3) and a
    window spans 128 slices (832 mm), i.e. a shape the core never saw in training.
``native``
    No resampling at all (only the reorientation to RAS). Fastest and interpolation-free, but
    the physical scale differs from training on every axis whose spacing is not ``spacing``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from adapt3d.data.preprocess import Grid
from adapt3d.registry import Registry

Spacing = tuple[float, float, float]
#: ``rule(ras_spacing, spacing) -> working spacing`` (None: keep the input spacing).
SpacingRule = Callable[[Spacing, float], "Spacing | None"]
RESAMPLING: Registry[SpacingRule] = Registry("resampling policy")


@RESAMPLING.register("isotropic")
def _isotropic(ras: Spacing, spacing: float) -> Spacing:
    """Every axis to ``spacing``."""
    return (spacing, spacing, spacing)


@RESAMPLING.register("inplane")
def _inplane(ras: Spacing, spacing: float) -> Spacing:
    """The two finest axes to ``spacing``; the coarsest (ties: the last) keeps its spacing."""
    thick = 2 - int(np.argmax(np.asarray(ras)[::-1]))
    return tuple(float(s) if axis == thick else spacing for axis, s in enumerate(ras))  # type: ignore[return-value]


@RESAMPLING.register("native")
def _native(ras: Spacing, spacing: float) -> Spacing | None:
    """Keep the input spacing."""
    return None


def ras_spacing(affine: np.ndarray) -> Spacing:
    """Voxel size (mm) along the R, A, S axes of the reoriented (canonical) array."""
    ornt = nib.orientations.io_orientation(affine)
    out = np.empty(3)
    out[ornt[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    return tuple(float(s) for s in out)  # type: ignore[return-value]


def working_spacing(policy: str, spacing: float, affine: np.ndarray) -> Spacing | None:
    """The working spacing that ``policy`` gives an image with ``affine`` (for ``to_working_grid``)."""
    return RESAMPLING.get(policy)(ras_spacing(affine), float(spacing))


@dataclass(frozen=True)
class ResamplingRecord:
    """What a report states about the resampling of one prediction (spacings in RAS order, mm)."""

    policy: str
    spacing: float
    input_spacing: Spacing
    working_spacing: Spacing
    working_shape: tuple[int, int, int]
    window_mm: Spacing  # physical extent of one window

    @classmethod
    def of(cls, policy: str, spacing: float, grid: Grid, window: int) -> ResamplingRecord:
        """The record of a working ``grid`` made by ``policy`` for windows of ``window`` voxels."""
        return cls(
            policy,
            float(spacing),
            tuple(round(s, 4) for s in grid.canonical_spacing),  # type: ignore[arg-type]
            tuple(round(s, 4) for s in grid.spacing),  # type: ignore[arg-type]
            tuple(int(n) for n in grid.shape),  # type: ignore[arg-type]
            tuple(round(window * s, 2) for s in grid.spacing),  # type: ignore[arg-type]
        )

    def describe(self) -> str:
        """One line, e.g. ``isotropic 1.5 mm: input 0.78×0.78×6.5 mm → working 1.5×1.5×1.5 mm``."""
        return (
            f"{self.policy} {self.spacing:g} mm: input {_mm(self.input_spacing)} mm → working "
            f"{_mm(self.working_spacing)} mm, window {_mm(self.window_mm)} mm"
        )


def _mm(spacing: Spacing) -> str:
    return "×".join(f"{s:g}" for s in spacing)
