"""The LightningModule: training the adapters on a frozen core by its contract's recipe."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

from adapt3d.cores import core_spec
from adapt3d.train.config import TrainSection
from adapt3d.train.recipes import RECIPES, StepContext
from adapt3d.tuners.model import AdaptedModel


class AdaptModule(L.LightningModule):
    """Trains the adapter parameters of ``model`` by the training recipe of its core's contract
    (:mod:`adapt3d.train.recipes`: SAM-Med3D's click rounds with mask feedback, SegVol's text and
    spatial prompt rounds). Checkpoints hold only the trainable parameters."""

    def __init__(self, model: AdaptedModel, train: TrainSection, seed: int, *, modality: str = "CT", class_names: tuple = (),
                 extra_loss=None, preserve=None) -> None:
        super().__init__()
        self.model = model
        self.cfg = train
        self.seed = seed
        self.recipe = RECIPES.get(core_spec(model).contract.training)
        self.step_context = StepContext(train, modality, list(class_names))
        self.extra_loss = extra_loss  # e.g. the context head: callable(module, batch) -> (loss, logs)
        self.preserve = preserve  # CT preservation (train/preserve.py): callable(module) -> (loss, logs)
        self.strict_loading = False
        self.seg_enabled = True  # False during a context-only pre-adaptation stage
        self.auto = None  # learned class prompts (adapt3d.auto.training.AutoTraining): a first round without clicks
        self.loss_history: list[dict] = []
        if train.grad_checkpointing and hasattr(model.core, "image_encoder"):
            model.core.image_encoder.grad_checkpointing = True

    def segmentation_loss(self, emb: torch.Tensor, batch: dict, rng: np.random.Generator, start: torch.Tensor | None = None) -> torch.Tensor:
        """The recipe's mean loss over its rounds on encoded crops (``batch``: label, known, class_index);
        ``start``: low-res logits of an automatic first round, the first clicks' mask prompt and error."""
        return self.recipe.step(self.model, emb, batch, rng, self.step_context, start)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)  # dropout: same per step, resumed or not
        rng = np.random.default_rng([self.seed, self.global_step, self.global_rank])
        loss = torch.zeros((), device=batch["image"].device)
        logs = {}
        if self.seg_enabled:
            emb = self.model.encode(batch["image"])
            auto_loss, start = (0.0, None) if self.auto is None else self.auto.step(self.model, emb, batch, logs)
            loss = self.segmentation_loss(emb, batch, rng, start) + auto_loss
            logs["train/seg_loss"] = loss.detach()
        if self.extra_loss is not None:
            extra, extra_logs = self.extra_loss(self, batch)
            loss = loss + extra
            logs.update(extra_logs)
        if self.preserve is not None:
            kept, kept_logs = self.preserve(self)
            loss, logs = loss + kept, {**logs, **kept_logs}
        self.log_dict({"train/loss": loss.detach(), **logs}, prog_bar=True, batch_size=batch["image"].shape[0])
        self.loss_history.append({"step": int(self.global_step) + 1, "loss": float(loss.detach())})
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if hasattr(self.extra_loss, "update_teacher"):
            self.extra_loss.update_teacher(self)

    def configure_optimizers(self):
        groups = self.model.param_groups(self.cfg.weight_decay)
        if isinstance(self.extra_loss, torch.nn.Module):
            head = [p for p in self.extra_loss.parameters() if p.requires_grad]
            if head:
                groups.append({"params": head, "weight_decay": self.cfg.weight_decay})
        if self.auto is not None:
            groups.append({"params": list(self.auto.parameters()), "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.cfg.warmup_steps, total - 1) if total > 1 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep what training changes (trainable weights), the buffers (small; e.g. a randomly drawn
        positional-encoding matrix) and the extra loss' state (e.g. the EMA teacher)."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad} | {n for n, _ in self.named_buffers()}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in keep or k.startswith("extra_loss.")
        }
        checkpoint["loss_history"] = self.loss_history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loss_history = list(checkpoint.get("loss_history", []))
