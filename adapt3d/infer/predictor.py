"""Prompted prediction with a SAM-Med3D-format core on one crop around the clicks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adapt3d.data.imageio import Volume
from adapt3d.data.preprocess import Grid, Window, centred_window, clamp_ct, from_working_grid, normalise, to_working_grid
from adapt3d.errors import InputError
from adapt3d.prompts.loop import ClickLoop, upsampled


@dataclass
class PreparedCrop:
    """A normalised crop ready for the encoder and how it maps back to the input grid."""

    image: torch.Tensor  # (1, 1, S, S, S)
    window: Window
    grid: Grid
    working_shape: tuple[int, int, int]

    def to_crop(self, ijk: Sequence[float]) -> np.ndarray:
        """Input-voxel coordinates → crop voxel coordinates (array order of the crop)."""
        return self.grid.to_working(np.asarray(ijk, dtype=float)) - np.asarray(self.window.start, dtype=float)


class CropPredictor:
    """Runs a core on a crop centred on the first click, click after click, as SAM-Med3D is used."""

    def __init__(
        self,
        core: nn.Module,
        *,
        target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
        normalization: str = "sam-med3d",
    ) -> None:
        self.core = core
        self.target_spacing = target_spacing
        self.normalization = normalization

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    def prepare(self, image: Volume, modality: str, center_ijk: Sequence[float]) -> PreparedCrop:
        """Reorient, resample and crop ``image`` around ``center_ijk`` (input voxel coordinates)."""
        check_inside(image, center_ijk)
        raw = Volume(clamp_ct(image.array, modality), image.affine, image.header, image.path)
        work, grid = to_working_grid(raw, self.target_spacing)
        window = centred_window(grid.to_working(np.asarray(center_ijk, dtype=float)), self.core.image_size)
        crop = normalise(window.extract(work), modality, self.normalization)
        tensor = torch.from_numpy(crop)[None, None].to(self.device)
        return PreparedCrop(tensor, window, grid, tuple(work.shape))

    @torch.no_grad()
    def run_clicks(
        self, prepared: PreparedCrop, points_ijk: Sequence[Sequence[float]], labels: Sequence[int]
    ) -> list[torch.Tensor]:
        """Low-res logits after each click; click n sees clicks 1..n and the logits of click n-1."""
        for p in points_ijk:
            crop_p = prepared.to_crop(p)
            if np.any(crop_p < 0) or np.any(crop_p > self.core.image_size - 1):
                raise InputError(
                    f"point {tuple(p)} lies outside the {self.core.image_size}³ crop around the first point "
                    f"({self.core.image_size * self.target_spacing[0]:.0f} mm); start a separate prediction for it"
                )
        loop = ClickLoop(self.core, self.core.encode(prepared.image))
        crop_pts = torch.tensor(np.stack([prepared.to_crop(p) for p in points_ijk]), dtype=torch.float32)
        crop_pts = crop_pts.round()[None].to(self.device)
        lab = torch.tensor(list(labels), dtype=torch.int64)[None].to(self.device)
        return [loop.step(crop_pts[:, :n], lab[:, :n]) for n in range(1, len(points_ijk) + 1)]

    def probability(self, prepared: PreparedCrop, logits: torch.Tensor) -> np.ndarray:
        """Foreground probability on the input grid from low-res logits."""
        crop_prob = torch.sigmoid(upsampled(self.core, logits))[0, 0].cpu().numpy()
        working = prepared.window.paste(crop_prob, prepared.working_shape)
        return from_working_grid(working, prepared.grid, order=1)

    def predict(
        self, image: Volume, modality: str, points_ijk: Sequence[Sequence[float]], labels: Sequence[int]
    ) -> np.ndarray:
        """Binary mask (uint8) on the input grid after all clicks (the crop is centred on the first)."""
        if not points_ijk:
            raise InputError("at least one point is needed")
        if labels[0] != 1:
            raise InputError("the first point must be positive (inside the object)")
        prepared = self.prepare(image, modality, points_ijk[0])
        logits = self.run_clicks(prepared, points_ijk, labels)[-1]
        return (self.probability(prepared, logits) > 0.5).astype(np.uint8)


def check_points(image: Volume, points_ijk: Sequence[Sequence[float]], labels: Sequence[int]) -> None:
    """Raise :class:`InputError` unless there is at least one point, one 1/0 label each, all inside ``image``."""
    if not points_ijk:
        raise InputError("at least one point is needed")
    if len(labels) != len(points_ijk) or any(lab not in (0, 1) for lab in labels):
        raise InputError("give one label per point: 1 (positive) or 0 (negative)")
    for p in points_ijk:
        check_inside(image, p)


def check_inside(image: Volume, ijk: Sequence[float]) -> None:
    """Raise :class:`InputError` unless voxel coordinates ``ijk`` lie inside ``image``."""
    where = f"{image.path}: " if image.path else ""
    if len(ijk) != 3 or any(not 0 <= c <= s - 1 for c, s in zip(ijk, image.shape)):
        raise InputError(f"{where}point {tuple(ijk)} lies outside the volume of shape {image.shape}")
