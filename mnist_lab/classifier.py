"""The one LightningModule: any injected network, cross-entropy, accuracy, logging."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lab.errors import NonFiniteLossError
from mnist_lab.finetune import FineTune
from mnist_lab.weights import CONFIG_KEY


class Classifier(pl.LightningModule):
    """Trains `net` with cross-entropy; logs train/loss, val/loss, val/acc, test/*.

    Args:
        net: any (B, C, 28, 28) -> (B, num_classes) module.
        optimizer: a partial that takes the parameters (`_partial_: true` in conf/optimizer).
        scheduler: a partial that takes the optimizer, or None.
        scheduler_interval: "epoch" or "step": when the scheduler steps.
        num_classes: for the accuracy metrics.
        channels_last: run the network in channels_last memory format (faster convs on CPU).
        finetune: which layer groups train when and at which lr (mnist_lab/finetune.py), or
            None: every parameter trains in one param group.
        config: the resolved `model` and `data` config, stored in every checkpoint so that the
            checkpoint alone rebuilds the network (mnist_lab.checkpoints), or None.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        num_classes: int = 10,
        channels_last: bool = False,
        finetune: FineTune | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.finetune = finetune
        if finetune is not None:
            finetune.bind(net)  # a no-op when train() bound it already (config.build_run does)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints (torchmetrics states are not by default): a resumed run still
        # knows the best val/acc of the epochs before the interruption.
        self.val_acc_best.persistent(True)
        # Training loss summed on the device and read once per logging window: reading it
        # every step (loss.item()) would force a host sync per batch.
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def best_val_acc(self) -> float | None:
        """The best val/acc of the run so far, also of the epochs before a resume; None before any validation.

        Read from the metric's state (restored from the checkpoint), not from what was logged:
        a run resumed from its last epoch's checkpoint validates no more in the new process.
        """
        best = self.val_acc_best.max_value  # MaxMetric's state: -inf until the first update
        return best.item() if torch.isfinite(best) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_count += 1
        # Lightning writes logs when (step + 1) % log_every_n_steps == 0; log the window's
        # mean on exactly those steps (the article prints the mean of every 200 batches).
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]  # set by Trainer.__init__
            mean = self._loss_sum / self._loss_count
            if not math.isfinite(mean.item()):
                raise NonFiniteLossError(
                    f"The training loss became {mean.item()} in the {self._loss_count} steps up to step "
                    f"{self.global_step} (epoch {self.current_epoch}). The usual cause is a learning rate "
                    "that is too high: lower optimizer.lr (or scheduler max_lr) and start again."
                )
            self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True)
            self._loss_sum, self._loss_count = None, 0
        return loss

    def _evaluate(self, batch, acc: MulticlassAccuracy, loss_metric: MeanMetric) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss_metric.update(F.cross_entropy(logits, y), weight=len(y))
        acc.update(logits, y)
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_acc, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc_best.update(acc)
        self.log_dict(
            {"val/acc": acc, "val/loss": self.val_loss.compute(), "val/acc_best": self.val_acc_best.compute()},
            prog_bar=True,
        )
        self.val_acc.reset()
        self.val_loss.reset()

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self._evaluate(batch, self.test_acc, self.test_loss)
        return {"logits": logits}

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/acc": self.test_acc.compute(), "test/loss": self.test_loss.compute()})
        self.test_acc.reset()
        self.test_loss.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint[CONFIG_KEY] = self.config
        # The unlogged part of the train/loss window: a run resumed mid-window logs the same mean.
        checkpoint["train_loss_window"] = {"sum": self._loss_sum, "count": self._loss_count}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        window = checkpoint.get("train_loss_window", {"sum": None, "count": 0})
        self._loss_sum, self._loss_count = window["sum"], window["count"]

    def configure_callbacks(self) -> list[pl.Callback]:
        # The strategy's schedule (frozen groups per epoch, plateau events) travels with the
        # module, so every trainer that fits it applies it.
        from mnist_lab.callbacks.finetune import FineTuneSchedule

        # Once per trainer: Lightning asks again for trainer.test() and would replace it, noisily.
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # public; set in Trainer.__init__
        if self.finetune is None or any(isinstance(c, FineTuneSchedule) for c in callbacks):
            return []
        return [FineTuneSchedule(self.finetune)]

    def configure_optimizers(self):
        if self.finetune is None:
            optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        else:  # one param group per layer group, frozen ones included (see mnist_lab/finetune.py)
            base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
            if base_lr is None:
                base_lr = inspect.signature(self.optimizer_factory).parameters["lr"].default
            optimizer = self.optimizer_factory(self.finetune.param_groups(self.net, base_lr))
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        # OneCycleLR needs the run's length, known only once the trainer has the data.
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters and "total_steps" not in getattr(
            self.scheduler_factory, "keywords", {}
        ):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if self.finetune is not None:
            kwargs.update(self.finetune.scheduler_kwargs(self.scheduler_factory, optimizer))
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
