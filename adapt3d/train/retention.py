"""CT Dice retention at every validation, target validation Dice, and the retention guard."""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import torch

from adapt3d.data.items import Item
from adapt3d.evaluate.evaluators import evaluate_model
from adapt3d.evaluate.nclick import Protocol
from adapt3d.train.config import RetentionSection


def mean_dice(record: dict, clicks: int) -> float:
    """Mean Dice of an EVAL record at ``clicks``."""
    return float(record["summary"][str(clicks)]["dice"]["mean"])


class RetentionMonitor(L.Callback):
    """Every ``every_n_epochs``: Dice of the adapted model on the CT reference items divided by the
    frozen core's Dice on the same items (same protocol, seed, prompts) and the target validation
    Dice. Below ``threshold`` the guard fires: ``stop`` ends training, ``keep-best`` goes on; both
    end with the adapter state of the best validation whose retention met the threshold."""

    def __init__(
        self,
        *,
        reference: list[Item],
        reference_modality: str,
        frozen_dice: float | None,
        target_val: list[Item],
        target_modality: str,
        protocol: Protocol,
        val_clicks: tuple[int, ...],
        section: RetentionSection,
        every_n_epochs: int = 1,
    ) -> None:
        self.reference = reference
        self.reference_modality = reference_modality
        self.frozen = frozen_dice
        self.target_val = target_val
        self.target_modality = target_modality
        self.val_protocol = dataclasses.replace(protocol, clicks=tuple(val_clicks))
        self.ret_protocol = dataclasses.replace(protocol, clicks=(section.clicks,))
        self.section = section
        self.every = max(1, every_n_epochs)
        self.history: list[dict] = []
        self.triggered = False
        self.best: dict | None = None  # {"step", "score", "state"}

    def _measure(self, model) -> tuple[float, float]:
        retention = float("nan")
        if self.reference and self.frozen:
            ref = evaluate_model(model, self.reference, self.reference_modality, self.ret_protocol, desc="retention")
            retention = mean_dice(ref, self.section.clicks) / self.frozen
        val = float("nan")
        if self.target_val:
            rec = evaluate_model(model, self.target_val, self.target_modality, self.val_protocol, desc="validation")
            val = mean_dice(rec, max(self.val_protocol.clicks))
        return retention, val

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if (epoch + 1) % self.every and not last:
            return
        values = self._measure(pl_module.model) if trainer.is_global_zero else (0.0, 0.0)
        retention, val = trainer.strategy.broadcast(values, src=0)
        step = int(trainer.global_step)
        pl_module.log_dict({"val/retention": retention, "val/target_dice": val}, rank_zero_only=True)
        self.history.append({"step": step, "epoch": epoch, "retention": retention, "target_dice": val})
        ok = math.isnan(retention) or retention >= self.section.threshold
        if not ok and self.section.action != "none":
            self.triggered = True
            if self.section.action == "stop":
                trainer.should_stop = True
        if ok:
            score = val if not math.isnan(val) else float(step)  # no validation set: the latest wins
            if self.best is None or score >= self.best["score"]:
                state = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
                self.best = {"step": step, "score": score, "state": state}

    def restore_best(self, pl_module: L.LightningModule) -> int | None:
        """Load the best admissible adapter state back into the model; returns its step."""
        if self.section.action == "none" or self.best is None:
            return None
        params = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name, value in self.best["state"].items():
                params[name].copy_(value.to(params[name].device))
        return self.best["step"]

    def state_dict(self) -> dict:
        return {"history": self.history, "triggered": self.triggered, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.triggered = bool(state.get("triggered", False))
        self.best = state.get("best")
