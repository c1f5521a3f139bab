"""Training-epoch and validation wall-clock times, kept apart."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch and of its validation, kept apart.

    Lightning runs the end-of-epoch validation inside the training epoch (before
    on_train_epoch_end), so the clock stops while validation runs: `epoch_seconds` holds the
    time of the training batches alone, which is what a hand-written loop's epoch time
    measures, and `val_seconds` the time of that epoch's validation passes. The clock starts
    again at the next training batch, not when validation ends: the checkpoints written after
    validation (best and last.ckpt) belong to neither figure. Logged as
    time/epoch_s and time/val_s. `train_seconds()` is the whole fit's wall-clock time,
    the earlier parts of a resumed run included.
    """

    def __init__(self) -> None:
        self.train_seconds_before = 0.0  # restored from the checkpoint on resume
        self._fit_start: float | None = None
        self.epoch_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self._start: float | None = None  # None while the clock is stopped
        self._val_start: float | None = None
        self._paused = False  # stopped by validation, to start again with the next batch
        self._train = self._val = 0.0

    def train_seconds(self) -> float:
        """Training wall-clock seconds of this run, earlier (interrupted) parts included."""
        this_part = 0.0 if self._fit_start is None else time.perf_counter() - self._fit_start
        return self.train_seconds_before + this_part

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def _begin(self) -> None:
        self._train = self._val = 0.0
        self._paused = False
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._begin()

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start (Lightning skips it then).
        self._begin()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._start is None:  # sanity check, or validate() outside a training epoch
            return
        now = time.perf_counter()
        self._train += now - self._start
        self._start, self._val_start = None, now

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_start is None:
            return
        now = time.perf_counter()
        self._val += now - self._val_start
        self._val_start, self._paused = None, True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._paused:  # the first batch after a validation pass inside the epoch
            self._start, self._paused = time.perf_counter(), False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self._train += time.perf_counter() - self._start
        self._start, self._paused = None, False
        self.epoch_seconds.append(self._train)
        self.val_seconds.append(self._val)
        pl_module.log_dict({"time/epoch_s": self._train, "time/val_s": self._val})

    def state_dict(self) -> dict:
        return {
            "epoch_seconds": self.epoch_seconds,
            "val_seconds": self.val_seconds,
            "train_seconds": self.train_seconds(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.val_seconds = list(state_dict.get("val_seconds", []))  # checkpoints before val_seconds existed
        self.train_seconds_before = state_dict.get("train_seconds", 0.0)
