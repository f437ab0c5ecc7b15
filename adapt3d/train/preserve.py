"""Retention-preserving objective: keep the frozen core's outputs on unlabelled CT crops while adapting.

Before training, ``retention.preserve_pool`` crops are cut from CT images (the reference set's,
or any nnU-Net dataset of CT images, labels unused) and prompted as the N-click protocol prompts:
each crop is centred on a random body voxel, a *pseudo-object* (the connected region of similar
intensity around it) stands in for the missing label, and ``preserve_clicks`` rounds of clicks of
the evaluation's click simulator are placed against the frozen core's own predictions, the
previous round's low-res logits fed back. The frozen core's image embeddings and per-round mask
logits are computed once, through the same network with the adapter switched off
(``AdaptedModel.using(None)``), and cached: the core is frozen, so they never change, and no
second copy of the core is kept. Full fine-tuning has no adapter to switch off; its targets are
cached before the first optimizer step, when the weights still are the core's.

Each training step then draws ``preserve_crops`` crops from the pool, runs the adapted model on
them with the same prompts (the frozen previous-round logits fed back) and adds
``preserve_weight`` × (Bernoulli KL of the mask logits + relative MSE of the embeddings).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from adapt3d.data.domains import Domain
from adapt3d.data.items import prepare_image
from adapt3d.data.nnunet import Case, read_dataset
from adapt3d.data.preprocess import centred_window, normalise
from adapt3d.errors import ConfigError
from adapt3d.prompts.clicks import CLICK_SIMULATORS, Click
from adapt3d.train.config import RetentionSection
from adapt3d.tuners.model import AdaptedModel

#: pseudo-object: voxels within this many standard deviations (of the normalised crop) of the seed
BAND = 0.5
#: a pseudo-object is accepted when it covers this fraction range of the crop (else another seed)
OBJECT_FRACTION = (0.001, 0.25)
SEED_TRIES = 20


@dataclass(frozen=True)
class CropSource:
    """Where the preservation crops come from: CT images (labels, if any, are never read)."""

    cases: tuple[Case, ...]
    modality: str
    origin: str  # for the run record


def preservation_source(section: RetentionSection, reference: Domain | None) -> CropSource:
    """The images to preserve on: ``retention.preserve_path`` or else the reference set's images."""
    if section.preserve_path:
        ds = read_dataset(section.preserve_path)
        cases = tuple(ds.cases)
        if not cases:
            raise ConfigError(f"{ds.root}: retention.preserve_path holds no images")
        return CropSource(cases, ds.modality, f"{ds.name} ({len(cases)} images, labels unused)")
    if reference is None:
        raise ConfigError("retention.preserve needs CT images: set data.reference or retention.preserve_path")
    cases = tuple(dict.fromkeys(i.case for i in reference.split.test))  # unique, in order
    return CropSource(cases, reference.modality, f"the reference set's images ({len(cases)}, labels unused)")


def foreground(image: np.ndarray) -> np.ndarray:
    """Body voxels: above the midpoint of the image's 1st–99th percentile range (CT: ≈ −250 HU and up)."""
    lo, hi = np.percentile(image, [1, 99])
    return image > (lo + hi) / 2


def pseudo_object(crop: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    """The connected region of voxels within ``BAND`` sd of the seed's intensity, containing the seed."""
    similar = np.abs(crop - crop[seed]) <= BAND * (crop.std() or 1.0)
    regions, _ = ndimage.label(similar)
    return regions == regions[seed]


def sample_crops(source: CropSource, n: int, *, size: int, spacing: tuple[float, float, float], normalization: str,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normalised crops (n, size³) centred on random body voxels, and their pseudo-objects."""
    rng = np.random.default_rng([seed, 18])
    crops, objects = [], []
    for i in range(n):
        image = prepare_image(source.cases[i % len(source.cases)], source.modality, tuple(spacing))[0]
        body = np.argwhere(foreground(image))
        if not len(body):
            raise ConfigError(f"{source.cases[i % len(source.cases)].image_path}: no foreground to preserve on")
        centre = (size // 2,) * 3
        for _ in range(SEED_TRIES):  # the last draw is kept when none fits
            window = centred_window(body[rng.integers(len(body))].astype(float), size)
            crop = normalise(window.extract(image), source.modality, normalization)
            obj = pseudo_object(crop, centre)
            if OBJECT_FRACTION[0] <= obj.mean() <= OBJECT_FRACTION[1]:
                break
        crops.append(crop)
        objects.append(obj)
    return np.stack(crops).astype(np.float32), np.stack(objects)


class Preservation:
    """The preservation loss (a plain object: nothing of it enters the module's state dict)."""

    def __init__(self, model: AdaptedModel, source: CropSource, section: RetentionSection, *, normalization: str,
                 spacing: tuple[float, float, float], simulator: str, seed: int) -> None:
        t0 = time.perf_counter()
        self.section = section
        self.seed = seed
        self.origin = source.origin
        size = model.image_size
        crops, objects = sample_crops(source, section.preserve_pool, size=size, spacing=spacing,
                                      normalization=normalization, seed=seed)
        self.images = torch.from_numpy(crops)[:, None]
        self.frozen_source = "adapters off in the same module" if model.tuner.switchable else \
            "the core's weights before the first optimizer step (full fine-tuning: no adapter to switch off)"
        self.points, self.labels, self.embeddings, self.logits = self._frozen_targets(model, objects, simulator)
        self.setup_seconds = time.perf_counter() - t0
        self.history: list[dict] = []
        self.step_seconds: list[float] = []

    @torch.no_grad()
    def _frozen_targets(self, model: AdaptedModel, objects: np.ndarray, simulator: str) -> tuple[torch.Tensor, ...]:
        """Clicks, embeddings and per-round logits of the frozen core on every pool crop."""
        simulate = CLICK_SIMULATORS.get(simulator)
        rng = np.random.default_rng([self.seed, 19])
        rounds, size, low = self.section.preserve_clicks, model.image_size, model.low_res_size
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        points, labels, embeddings, logits = [], [], [], []
        switch = model.using(None) if model.tuner.switchable else contextlib.nullcontext()
        with switch:
            for image, obj in zip(self.images, objects):
                emb = model.encode(image[None].to(device))
                prev = torch.zeros(1, 1, low, low, low, device=device)
                clicks: list[Click] = []
                per_round = []
                pred = None
                for _ in range(rounds):
                    click = simulate(pred, obj, rng=rng)
                    if click is None:  # perfect already: one more click inside the object keeps counts equal
                        inside = np.argwhere(obj)
                        click = Click(tuple(int(v) for v in inside[rng.integers(len(inside))]), True)
                    clicks.append(click)
                    pts = torch.tensor([[c.position for c in clicks]], dtype=torch.float32, device=device)
                    lab = torch.tensor([[c.label for c in clicks]], dtype=torch.int64, device=device)
                    prev, _ = model.decode(emb, pts, lab, mask_logits=prev)
                    per_round.append(prev[0].float().cpu())
                    full = F.interpolate(prev.float(), size=(size,) * 3, mode="trilinear", align_corners=False)
                    pred = (full[0, 0] > 0).cpu().numpy()
                points.append(torch.tensor([c.position for c in clicks], dtype=torch.float32))
                labels.append(torch.tensor([c.label for c in clicks], dtype=torch.int64))
                embeddings.append(emb[0].float().cpu())
                logits.append(torch.stack(per_round))
        model.train(was_training)
        return torch.stack(points), torch.stack(labels), torch.stack(embeddings), torch.stack(logits)

    def cache_bytes(self) -> int:
        """Bytes held by the cache (crops, clicks, frozen embeddings and logits)."""
        return sum(t.numel() * t.element_size() for t in (self.images, self.points, self.labels, self.embeddings, self.logits))

    def __call__(self, module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted preservation loss on ``preserve_crops`` pool crops, and its log entries."""
        t0 = time.perf_counter()
        s = self.section
        rng = np.random.default_rng([self.seed, 20, int(module.global_step), int(module.global_rank)])
        idx = torch.from_numpy(rng.choice(len(self.images), size=min(s.preserve_crops, len(self.images)), replace=False))
        device = module.device
        model = module.model
        emb = model.encode(self.images[idx].to(device))
        logs = {}
        total = torch.zeros((), device=device)
        if s.preserve_target in ("embeddings", "both"):
            target = self.embeddings[idx].to(device)
            part = ((emb.float() - target) ** 2).mean() / (target**2).mean().clamp_min(1e-12)
            logs["train/preserve_embeddings"] = part.detach()
            total = total + part
        if s.preserve_target in ("logits", "both"):
            frozen = self.logits[idx].to(device)  # (b, rounds, 1, low, low, low)
            part = torch.zeros((), device=device)
            prev = torch.zeros_like(frozen[:, 0])
            for r in range(s.preserve_clicks):
                out, _ = model.decode(emb, self.points[idx, : r + 1].to(device), self.labels[idx, : r + 1].to(device),
                                      mask_logits=prev.to(emb.dtype))
                part = part + bernoulli_kl(out.float(), frozen[:, r])
                prev = frozen[:, r]
            part = part / s.preserve_clicks
            logs["train/preserve_logits"] = part.detach()
            total = total + part
        logs["train/preserve_loss"] = total.detach()
        self.history.append({"step": int(module.global_step) + 1, "loss": float(total.detach())})
        self.step_seconds.append(time.perf_counter() - t0)
        return s.preserve_weight * total, logs

    def record(self) -> dict:
        """The run record's ``training.preserve`` entry."""
        s = self.section
        forward = self.step_seconds[1:] or self.step_seconds  # the first call warms up
        return {
            "weight": s.preserve_weight, "crops_per_step": s.preserve_crops, "pool": s.preserve_pool,
            "clicks": s.preserve_clicks, "target": s.preserve_target, "source": self.origin,
            "frozen_outputs": self.frozen_source, "cache_bytes": self.cache_bytes(),
            "setup_seconds": round(self.setup_seconds, 3),
            "forward_seconds_per_step": round(float(np.mean(forward)), 4) if forward else None,
            "loss_history": self.history,
        }


def bernoulli_kl(logits: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel KL(frozen ‖ adapted) of the sigmoid masks: 0 exactly when the masks agree."""
    p = torch.sigmoid(frozen)
    return F.binary_cross_entropy_with_logits(logits, p) - F.binary_cross_entropy_with_logits(frozen, p)

