"""What a core expects of its input: window size, voxel spacing and intensity normalisation.

A core carries its preprocessing (``model.preprocessing``, set by ``load_core``): from the
checkpoint's adapt3d metadata (key ``"preprocessing"``, written by ``save_core``) when present,
else the default of the core's spec with the window size of its architecture. ``evaluate``,
``predict`` and ``pseudolabel`` use it unless a flag overrides it, so a core trained at 3 mm is
evaluated at 3 mm without anyone having to remember.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from adapt3d.errors import ConfigError

Size = int | tuple[int, int, int]
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """A core's input contract.

    ``image_size``: the encoder window in voxels (an int for a cube, or (D, H, W)); ``spacing``:
    the voxel size in mm the core was trained at, per RAS axis (None: the input's own spacing,
    for cores that do not resample, e.g. SegVol's zoom-out-zoom-in or slice-wise 2D SAM);
    ``normalization``: the name of the intensity normalisation (a ``NORMALISERS`` entry of
    ``adapt3d.data.preprocess``, or the core's own, e.g. ``sam2d``'s display range + pixel mean/std).
    """

    image_size: Size
    spacing: Spacing | None
    normalization: str

    def __post_init__(self) -> None:
        sizes = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,)
        if len(sizes) not in (1, 3) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"image_size must be a positive integer or three of them, got {self.image_size!r}")
        if self.spacing is not None and (
            len(self.spacing) != 3
            or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in self.spacing)
        ):
            raise ValueError(f"spacing must be three positive numbers (mm) or null, got {self.spacing!r}")
        if not isinstance(self.normalization, str) or not self.normalization:
            raise ValueError(f"normalization must be a non-empty name, got {self.normalization!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        size = list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size
        spacing = None if self.spacing is None else [float(s) for s in self.spacing]
        return {"image_size": size, "spacing": spacing, "normalization": self.normalization}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "preprocessing") -> Preprocessing:
        """Build from :meth:`to_dict`'s output; a missing, unknown or bad value is a :class:`ConfigError`."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping with image_size, spacing, normalization, got {values!r}")
        keys = {"image_size", "spacing", "normalization"}
        if set(values) != keys:
            missing, unknown = sorted(keys - set(values)), sorted(set(values) - keys)
            raise ConfigError(f"{where}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            ))
        size, spacing = values["image_size"], values["spacing"]
        try:
            return cls(
                image_size=tuple(size) if isinstance(size, (list, tuple)) else size,
                spacing=None if spacing is None else tuple(float(s) for s in spacing),
                normalization=values["normalization"],
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def with_image_size(self, image_size: Size) -> Preprocessing:
        """The same preprocessing for a window of ``image_size``."""
        return replace(self, image_size=tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size)

    def isotropic_spacing(self, where: str = "core") -> float:
        """The one spacing (mm) of an isotropic preprocessing; :class:`ConfigError` otherwise."""
        if self.spacing is None or len(set(self.spacing)) != 1:
            raise ConfigError(f"{where}: its preprocessing spacing {self.spacing} is not one isotropic value; give --spacing")
        return float(self.spacing[0])

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``128³ at 1.5 mm, sam-med3d normalisation``."""
        size = "×".join(map(str, self.image_size)) if isinstance(self.image_size, tuple) else f"{self.image_size}³"
        if self.spacing is None:
            at = "native spacing"
        else:
            at = f"{'×'.join(dict.fromkeys(f'{s:g}' for s in self.spacing))} mm"
        return f"{size} at {at}, {self.normalization} normalisation"
