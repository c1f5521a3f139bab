"""Keeping a run resumable: last.ckpt after every validation, every N steps and on signals."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from mnist_lab.errors import NonFiniteLossError, RunInterrupted
from mnist_lab.rng import rng_state, set_rng_state
from mnist_lab.weights import LAST


def parameters_finite(module: torch.nn.Module) -> bool:
    """True when every parameter is finite (one host sync for the whole model)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class Resumable(Checkpoint):
    """Keeps a run resumable: checkpoints/last.ckpt after every validation (or every epoch without one), every N
    steps, at the end and on signals.

    Lightning saves the model, optimizer, scheduler, loop counters, callback states and the
    train loader's position (`TensorBatches.state_dict`); this adds the global RNG states
    (dropout and augmentation draw from them) so that a resumed run draws the same numbers.
    A signal only sets a flag: the checkpoint is written at the end of the current training
    batch or validation, where Lightning's loop state is consistent (where ModelCheckpoint
    saves), then training stops with RunInterrupted. A second Ctrl-C stops at once. Weights
    that are NaN/inf are never written: the last good checkpoint stays.

    A `Checkpoint` subclass because Lightning runs those after all other callbacks, in list
    order: after validation, this saves once ModelCheckpoint has recorded the epoch's score
    (ModelCheckpoint itself rewrites last.ckpt only when val/acc improved).

    Args:
        dirpath: the run's checkpoints/ directory.
        every_n_train_steps: also write last.ckpt every N optimizer steps (None: not mid-epoch).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.signum: int | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._saved_at_step: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    # -- state in every checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict["rng"]

    # -- signals -------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning restored the checkpoint and before the first batch draws a number.
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        # After Lightning installed its own SIGTERM handler (it restores what it found at the
        # end of fit). Only the main thread may set handlers; with several processes (DDP)
        # Lightning's SIGTERM handling, which tells the other ranks, is kept.
        if threading.current_thread() is threading.main_thread() and trainer.world_size == 1:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self._handler)
            if trainer.received_sigterm:  # arrived while Lightning restored the checkpoint
                self.signum = signal.SIGTERM

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The finished loop's state, saved even though the last validation saved this step: only
        # here does last.ckpt record the run as done (`epoch` = the epochs trained, as the runs of
        # earlier versions hold it: tests/test_old_runs.py); a kill during the test resumes to the test.
        self._restore_handlers()
        self._save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # -- saving --------------------------------------------------------------------------
    def check_finite(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise NonFiniteLossError when the weights are NaN/inf (before anything saves them)."""
        if not parameters_finite(pl_module):
            raise NonFiniteLossError(
                f"The weights became NaN or infinite by step {trainer.global_step} (epoch {trainer.current_epoch}): "
                "the loss diverged. The usual cause is a learning rate that is too high: lower optimizer.lr "
                "(or the scheduler's max_lr) and start again."
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        periodic = self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0
        if periodic or self.signum is not None:
            self._save(trainer, pl_module)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write last.ckpt; stop with RunInterrupted when a signal asked for it."""
        self.check_finite(trainer, pl_module)
        trainer.save_checkpoint(self.last_path, weights_only=False)
        self._saved_at_step = trainer.global_step
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise RunInterrupted(
                f"{name} received: training stopped at step {trainer.global_step} (epoch {trainer.current_epoch}) "
                f"and its full state was saved to {self.last_path}. Continue it with "
                f"`python -m mnist_lab resume={self.dirpath.parent}`.",
                self.signum,
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":  # ModelCheckpoint saves after this validation: check first
            self.check_finite(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates before this hook; an epoch with no validation (data.val_size=0,
        # check_val_every_n_epoch > 1) has not saved yet, and would otherwise not be resumable.
        # After the last epoch on_train_end saves (see there): once is enough (a speed run times it).
        last = trainer.should_stop or trainer.current_epoch + 1 == trainer.max_epochs
        if self._saved_at_step != trainer.global_step and not last:
            self._save(trainer, pl_module)
        else:
            self.check_finite(trainer, pl_module)
