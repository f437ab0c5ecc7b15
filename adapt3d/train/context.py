"""VoCo-style contrastive context head with an EMA teacher, on unlabelled target volumes.

A region of 2S × 2S × S voxels (S = the core's input size) is cut into K = 4 non-overlapping
S³ base crops; random S³ crops are drawn inside the region. The head projects the pooled
encoder features of each crop; each random crop's cosine similarity to each base crop (teacher
features) is trained to equal the fraction of the random crop that overlaps that base crop,
and a regulariser keeps the base crops' features distinct. The teacher is an exponential
moving average of the student's trainable weights (adapters + head).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt3d.data.items import prepare_image
from adapt3d.data.nnunet import Case
from adapt3d.data.preprocess import Window, normalise

#: base-crop grid inside the region: 2 × 2 × 1 crops of side S
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


def voco_loss(student: torch.Tensor, teacher_bases: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction loss −log(1 − |y − sim|) over random×base pairs, and the base-distinctness regulariser.

    ``student`` (R, D) random-crop projections, ``teacher_bases`` (K, D), ``targets`` (R, K).
    """
    sim = F.cosine_similarity(student[:, None, :], teacher_bases[None, :, :], dim=-1).clamp(0, 1)
    pred = -torch.log(1 - (targets - sim).abs() + 1e-6).mean()
    base = F.normalize(teacher_bases, dim=-1)
    pairs = base @ base.T
    off = pairs[~torch.eye(len(base), dtype=torch.bool, device=base.device)]
    return pred, off.abs().mean()


class ContextHead(nn.Module):
    """Projection head + EMA teacher + crop sampling; called by the training step as an extra loss."""

    def __init__(
        self,
        cases: list[Case],
        modality: str,
        *,
        feature_dim: int,
        size: int,
        target_spacing: tuple[float, float, float],
        normalization: str,
        base_crops: int = 4,
        random_crops: int = 4,
        momentum: float = 0.9,
        weight: float = 0.1,
        projection_dim: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not cases:
            raise ValueError("the context head needs at least one target volume")
        self.cases, self.modality = cases, modality
        self.size, self.spacing, self.normalization = size, tuple(target_spacing), normalization
        self.k, self.r, self.momentum, self.weight, self.seed = base_crops, random_crops, momentum, weight, seed
        self.proj = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, projection_dim))
        self.teacher_proj = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, projection_dim))
        self.teacher_proj.load_state_dict(self.proj.state_dict())
        self.teacher_proj.requires_grad_(False)
        self.ema: dict[str, torch.Tensor] = {}

    def _volume(self, rng: np.random.Generator) -> np.ndarray:
        case = self.cases[int(rng.integers(len(self.cases)))]
        return prepare_image(case, self.modality, self.spacing)[0]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base crops (K, S, S, S), random crops (R, S, S, S) and their overlap targets (R, K)."""
        volume = self._volume(rng)
        s = self.size
        extent = [n * s for n in BASE_GRID]
        origin = tuple(int(rng.integers(min(0, v - e), max(0, v - e) + 1)) for v, e in zip(volume.shape, extent))
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

    def forward(self, module, batch: dict) -> tuple[torch.Tensor, dict]:
        """Weighted context loss for one training step (``module`` is the AdaptModule)."""
        rng = np.random.default_rng([self.seed, 7, int(module.global_step)])
        base, rand, targets = self.sample(rng)
        device = batch["image"].device
        student = self.proj(self._features(module.model, rand, device))
        with torch.no_grad(), self.teacher_weights(module):
            teacher = self.teacher_proj(self._features(module.model, base, device))
        pred, reg = voco_loss(student, teacher, torch.from_numpy(targets).to(device))
        loss = self.weight * (pred + reg)
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
        """EMA step: teacher ← m·teacher + (1 − m)·student, for the adapters and the head."""
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


def context_loss_for(model, cfg, target, protocol) -> ContextHead:
    """The context head of an experiment: on the target's unlabelled volumes, else all its images."""
    ch = cfg.context_head
    cases = target.dataset.unlabelled or [i.case for i in target.split.train]
    cases = list(dict.fromkeys(cases))
    dim = model.core.config.prompt_dim if hasattr(model.core.config, "prompt_dim") else model.core.config.embed_dim
    return ContextHead(
        cases, target.modality, feature_dim=dim, size=model.image_size, target_spacing=protocol.target_spacing,
        normalization=protocol.normalization, base_crops=ch.base_crops, random_crops=ch.random_crops,
        momentum=ch.momentum, weight=ch.weight, projection_dim=ch.projection_dim, seed=cfg.seed,
    )
