"""VoCo-style contrastive context head with an EMA teacher, on unlabelled volumes of the target modality.

The formulation follows VoCo (Wu et al., CVPR 2024; its public code, Luffy03/VoCo), which the
published recipe (USCL-Med3D) builds its context head on; written here for adapt3d's cores:

* a region inside the volume's field of view (its non-zero voxels) is tiled by a 2 × 2 × 1 grid of
  base crops of side ``crop_mm``; ``R`` random crops of the same side are drawn inside the region;
  every crop is resampled to the core's input, S³ voxels of ``crop_mm / S`` mm;
* the target of random crop i against base crop j is the fraction of i's volume lying in j;
* prediction loss: mean over pairs of −log(1 − |y_ij − s_ij|), s_ij = max(0, cos(p_i, q_j)) between
  the student's projection p_i of the random crop and the teacher's projection q_j of the base crop;
* regulariser: mean over pairs of base crops of max(0, cos(b_k, b_l))² on the STUDENT's projections
  b of the base crops: it pushes the features of different base crops apart and, like the
  prediction loss, trains the adapters and the head (VoCo's code computes it on the student too);
* the teacher is an exponential moving average of the student's trainable weights (adapters +
  head), updated after every step it was used in; it never receives gradients.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.data.items import prepare_image
from adapt3d.data.imageio import load_volume
from adapt3d.data.nnunet import Case, read_dataset
from adapt3d.data.preprocess import Window, normalise, to_working_grid
from adapt3d.errors import ConfigError

#: base-crop grid inside the region (RAS axes): 2 × 2 × 1 crops of side S. VoCo tiles 4 × 4 × 1;
#: adapt3d's own choice of 2 × 2 × 1 keeps a step at 8 + 4 encoder passes.
BASE_GRID = (2, 2, 1)


def base_windows(origin: tuple[int, int, int], size: int, k: int = 4) -> list[Window]:
    """The first ``k`` S³ base crops tiling the region that starts at ``origin`` (grid 2 × 2 × 1)."""
    cells = list(itertools.product(*(range(n) for n in BASE_GRID)))[:k]
    return [Window(tuple(o + c * size for o, c in zip(origin, cell)), size) for cell in cells]


def overlap_fractions(random: Window, bases: list[Window]) -> np.ndarray:
    """Fraction of the random crop's volume that lies in each base crop."""
    out = []
    for b in bases:
        inter = 1.0
        for r0, b0 in zip(random.start, b.start):
            inter *= max(0, min(r0 + random.size, b0 + b.size) - max(r0, b0))
        out.append(inter / random.size**3)
    return np.asarray(out, dtype=np.float32)


def prediction_loss(student: torch.Tensor, teacher_bases: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log(1 − |y − s|) averaged over random × base pairs; ``student`` (R, D), ``teacher_bases`` (K, D), ``targets`` (R, K)."""
    sim = F.relu(F.cosine_similarity(student[:, None, :], teacher_bases[None, :, :], dim=-1))
    return -torch.log(1 - (targets - sim).abs() + 1e-6).mean()


def base_regulariser(bases: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of base crops of max(0, cos)²; ``bases`` (K, D), the student's projections."""
    unit = F.normalize(bases, dim=-1)
    pairs = unit @ unit.T
    upper = torch.triu(torch.ones_like(pairs, dtype=torch.bool), diagonal=1)
    return (F.relu(pairs[upper]) ** 2).mean()


def fov_box(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (start, stop) of the non-zero voxels: the field of view (zero = outside it, as
    ultrasound reconstructions write it); the whole array when nothing is non-zero."""
    nz = np.nonzero(array)
    if not len(nz[0]):
        return np.zeros(3, dtype=int), np.asarray(array.shape)
    return np.array([a.min() for a in nz]), np.array([a.max() + 1 for a in nz])


def fov_extent_mm(case: Case) -> tuple[float, float, float]:
    """Extent in mm (RAS axes) of a volume's field of view, on its own grid."""
    work, grid = to_working_grid(load_volume(case.image_path, kind="image"), None)
    lo, hi = fov_box(work)
    return tuple(round(float((h - l) * s), 2) for l, h, s in zip(lo, hi, grid.spacing))


def auto_crop_mm(extents: list[tuple[float, float, float]], native_mm: float) -> float:
    """The base-crop side that fits the smallest field of view (its extent per grid cell), at most
    the core's native view (``native_mm`` = S × target spacing): the region then lies inside the
    field of view instead of in zero padding. adapt3d's rule; VoCo instead resizes each volume's
    foreground box to its fixed region."""
    fit = min(e / n for ext in extents for e, n in zip(ext, BASE_GRID))
    return round(min(native_mm, fit), 2)


class ContextHead(nn.Module):
    """Projection head + EMA teacher + crop sampling; called by the training step as an extra loss.

    Context stage (``module.seg_enabled`` False): loss = pred + reg_weight · reg. Segmentation
    stage: loss = weight · (pred + reg_weight · reg), skipped when ``weight`` is 0.
    """

    def __init__(
        self,
        cases: list[Case],
        modality: str,
        *,
        feature_dim: int,
        size: int,
        crop_mm: float,
        normalization: str,
        base_crops: int = 4,
        random_crops: int = 4,
        momentum: float = 0.9,
        weight: float = 0.0,
        reg_weight: float = 1.0,
        projection_dim: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not cases:
            raise ValueError("the context head needs at least one volume")
        self.cases, self.modality = cases, modality
        self.size, self.crop_mm, self.normalization = size, float(crop_mm), normalization
        self.spacing = (self.crop_mm / size,) * 3
        self.k, self.r, self.momentum, self.seed = base_crops, random_crops, momentum, seed
        self.weight, self.reg_weight = weight, reg_weight
        self.proj = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, projection_dim))
        self.teacher_proj = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, projection_dim))
        self.teacher_proj.load_state_dict(self.proj.state_dict())
        self.teacher_proj.requires_grad_(False)
        self.ema: dict[str, torch.Tensor] = {}
        self._boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _volume(self, rng: np.random.Generator) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        i = int(rng.integers(len(self.cases)))
        volume = prepare_image(self.cases[i], self.modality, self.spacing)[0]
        if i not in self._boxes:
            self._boxes[i] = fov_box(volume)
        return volume, self._boxes[i]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base crops (K, S, S, S), random crops (R, S, S, S) and their overlap targets (R, K)."""
        volume, (lo, hi) = self._volume(rng)
        s = self.size
        extent = [n * s for n in BASE_GRID]
        origin = tuple(
            int(a + rng.integers(min(0, (b - a) - e), max(0, (b - a) - e) + 1)) for a, b, e in zip(lo, hi, extent)
        )
        bases = base_windows(origin, s, self.k)
        randoms = [
            Window(tuple(int(o + rng.integers(0, e - s + 1)) for o, e in zip(origin, extent)), s) for _ in range(self.r)
        ]
        crop = lambda w: normalise(w.extract(volume), self.modality, self.normalization)  # noqa: E731
        targets = np.stack([overlap_fractions(w, bases) for w in randoms])
        return np.stack([crop(w) for w in bases]), np.stack([crop(w) for w in randoms]), targets

    def _features(self, model, crops: np.ndarray, device: torch.device) -> torch.Tensor:
        emb = model.encode(torch.from_numpy(crops)[:, None].to(device))
        return emb.mean(dim=(2, 3, 4))

    def stage_weight(self, module) -> float:
        """The context loss' weight in the current stage (1 in the context stage)."""
        return float(self.weight) if module.seg_enabled else 1.0

    def terms(self, module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction loss and the base regulariser of this step, both with their graphs."""
        rng = np.random.default_rng([self.seed, 7, int(module.global_step)])
        base, rand, targets = self.sample(rng)
        student = self.proj(self._features(module.model, np.concatenate([rand, base]), device))
        student_rand, student_base = student[: len(rand)], student[len(rand):]
        with torch.no_grad(), self.teacher_weights(module):
            teacher_base = self.teacher_proj(self._features(module.model, base, device))
        pred = prediction_loss(student_rand, teacher_base, torch.from_numpy(targets).to(device))
        return pred, base_regulariser(student_base)

    def forward(self, module, batch: dict) -> tuple[torch.Tensor, dict]:
        """Weighted context loss for one training step (``module`` is the AdaptModule)."""
        device = batch["image"].device
        weight = self.stage_weight(module)
        if weight == 0:
            return torch.zeros((), device=device), {}
        pred, reg = self.terms(module, device)
        loss = weight * (pred + self.reg_weight * reg)
        return loss, {"train/context_pred": pred.detach(), "train/context_reg": reg.detach()}

    def _student_params(self, module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in module.model.named_parameters() if p.requires_grad}

    def teacher_weights(self, module):
        """Context manager: the model's trainable weights temporarily replaced by their EMA."""
        head = self

        class _Swap:
            def __enter__(self_inner):
                params = head._student_params(module)
                if not head.ema:
                    head.ema = {n: p.detach().clone() for n, p in params.items()}
                self_inner.saved = {n: p.detach().clone() for n, p in params.items()}
                for n, p in params.items():
                    p.data.copy_(head.ema[n])

            def __exit__(self_inner, *exc):
                for n, p in head._student_params(module).items():
                    p.data.copy_(self_inner.saved[n])
                return False

        return _Swap()

    @torch.no_grad()
    def update_teacher(self, module) -> None:
        """EMA step: teacher ← m·teacher + (1 − m)·student, for the adapters and the head (only
        in steps where the context loss was used)."""
        if self.stage_weight(module) == 0:
            return
        m = self.momentum
        params = self._student_params(module)
        if not self.ema:
            self.ema = {n: p.detach().clone() for n, p in params.items()}
        for n, p in params.items():
            self.ema[n].mul_(m).add_(p.detach(), alpha=1 - m)
        for t, s in zip(self.teacher_proj.parameters(), self.proj.parameters()):
            t.mul_(m).add_(s.detach(), alpha=1 - m)

    def get_extra_state(self) -> dict:
        """The EMA of the adapter weights travels in checkpoints (resume gives the same teacher)."""
        return {"ema": {k: v.cpu() for k, v in self.ema.items()}}

    def set_extra_state(self, state: dict) -> None:
        self.ema = dict(state.get("ema", {}))


@dataclass(frozen=True)
class Pool:
    """The volumes the context head learns from, their modality and where they come from."""

    cases: list[Case]
    modality: str
    source: str  # the dataset folder (and which of its images)
    description: str = ""  # the dataset's own dataset.json description (what the images are)

    @property
    def caveat(self) -> str:
        """What the report says about the context head's data."""
        about = f" — {self.description}" if self.description else "."
        return f"Context head: a self-supervised stage (no labels used) on {len(self.cases)} {self.modality} image(s) of {self.source}{about}"


def context_pool(cfg, target) -> Pool:
    """Every image of ``context_head.pool`` (labelled or not, imagesTr and imagesTs), else the
    target's unlabelled images, else the images of its training items. Cheap: checked before any
    model work."""
    pool = cfg.context_head.pool
    if pool:
        if not Path(pool).is_dir():
            raise ConfigError(f"context_head.pool: {pool} is not a directory (an nnU-Net raw dataset)")
        ds = read_dataset(pool)
        if not ds.cases:
            raise ConfigError(f"context_head.pool: {pool} holds no images")
        return Pool(list(ds.cases), ds.modality, str(ds.root), str(ds.info.get("description") or ""))
    ds = target.dataset
    cases = ds.unlabelled or [i.case for i in target.split.train]
    source = f"{ds.root} ({'unlabelled' if ds.unlabelled else 'training'} images of the target)"
    return Pool(list(dict.fromkeys(cases)), target.modality, source, str(ds.info.get("description") or ""))


def context_loss_for(model, cfg, pool: Pool, protocol) -> tuple[ContextHead, dict]:
    """The context head of an experiment on ``pool`` and its run record (metrics.json training.context)."""
    ch = cfg.context_head
    dim = model.core.config.prompt_dim if hasattr(model.core.config, "prompt_dim") else model.core.config.embed_dim
    native_mm = model.image_size * min(protocol.target_spacing or model.preprocessing.spacing or (1.0,))
    extents = [fov_extent_mm(c) for c in pool.cases] if ch.crop_mm <= 0 else []
    crop_mm = auto_crop_mm(extents, native_mm) if extents else float(ch.crop_mm)
    head = ContextHead(
        pool.cases, pool.modality, feature_dim=dim, size=model.image_size, crop_mm=crop_mm,
        normalization=protocol.normalization, base_crops=ch.base_crops, random_crops=ch.random_crops,
        momentum=ch.momentum, weight=ch.weight, reg_weight=ch.reg_weight, projection_dim=ch.projection_dim, seed=cfg.seed,
    )
    record = {
        "pool": pool.source, "pool_cases": [c.case_id for c in pool.cases], "modality": pool.modality,
        "crop_mm": crop_mm, "crop_mm_from": "setting" if ch.crop_mm > 0 else "field of view (auto)",
        "region_mm": [round(n * crop_mm, 2) for n in BASE_GRID], "crop_voxel_mm": round(crop_mm / model.image_size, 4),
        "fov_extent_mm": {c.case_id: e for c, e in zip(pool.cases, extents)},
        "base_crops": ch.base_crops, "random_crops": ch.random_crops, "momentum": ch.momentum,
        "context_epochs": ch.pretrain_epochs, "segmentation_stage_weight": ch.weight, "reg_weight": ch.reg_weight,
        "caveat": pool.caveat,
    }
    return head, record
