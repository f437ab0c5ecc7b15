"""One progress display for training: a single bar over all steps, 1-based epochs, the loss."""

from __future__ import annotations

import lightning as L
from tqdm import tqdm


class TrainingProgress(L.Callback):
    """``epoch 3/10`` and the running loss on one bar (rank zero only; silent when not a terminal)."""

    def __init__(self, label: str = "training") -> None:
        self.label = label
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            total = int(trainer.estimated_stepping_batches)
            self.bar = tqdm(total=total, initial=int(trainer.global_step), desc=self.label, unit="step", disable=None, dynamic_ncols=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)
