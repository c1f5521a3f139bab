"""Applying a fine-tune strategy during training: frozen groups per epoch, plateau events, DDP gradients."""

from __future__ import annotations

from typing import Any, cast

import pytorch_lightning as pl
from torch import nn

from mnist_lab.finetune import FineTune


class FineTuneSchedule(pl.Callback):
    """Applies `strategy` (mnist_lab/finetune.py) to the Classifier's network at every epoch.

    The strategy's plateau events travel in the checkpoint (under `finetune`), so a resumed run
    continues with the same frozen groups as an uninterrupted one.

    Args:
        strategy: the run's FineTune, already bound to the network (train() binds it once).
    """

    def __init__(self, strategy: FineTune) -> None:
        self.strategy = strategy

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.strategy.distributed = trainer.world_size > 1  # before the strategy wraps the model (DDP)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start (Lightning skips it when
        # restarting mid-epoch): the epoch's frozen groups are applied here as well.
        self.strategy.apply(_net(pl_module), trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        frozen = self.strategy.apply(_net(pl_module), trainer.current_epoch)
        pl_module.log("finetune/frozen_groups", float(len(frozen)), on_step=False, on_epoch=True)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.strategy.distributed:
            self.strategy.drop_frozen_grads(_net(pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's values were logged, and before the checkpoint callbacks save them
        # (Lightning runs Checkpoint callbacks after all others).
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(trainer.callback_metrics[k]) for k in ("val/acc", "val/loss")}
        self.strategy.observe(trainer.current_epoch, metrics)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["finetune"] = self.strategy.state_dict()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if "finetune" in checkpoint:
            self.strategy.load_state_dict(checkpoint["finetune"])


def _net(pl_module: pl.LightningModule) -> nn.Module:
    """The Classifier's network (its `net`)."""
    return cast(nn.Module, pl_module.net)
