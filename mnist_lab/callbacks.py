"""Callbacks of the `callbacks` config group that Lightning does not ship."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown

import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch and of its validation, kept apart.

    Lightning runs the end-of-epoch validation inside the training epoch (before
    on_train_epoch_end), so the clock stops while validation runs: `epoch_seconds` holds the
    time of the training batches alone, which is what a hand-written loop's epoch time
    measures, and `val_seconds` the time of that epoch's validation passes. Logged as
    time/epoch_s and time/val_s.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self._start: float | None = None  # None while the clock is stopped
        self._val_start: float | None = None
        self._train = self._val = 0.0

    def _begin(self) -> None:
        self._train = self._val = 0.0
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
        self._start, self._val_start = now, None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self._train += time.perf_counter() - self._start
        self._start = None
        self.epoch_seconds.append(self._train)
        self.val_seconds.append(self._val)
        pl_module.log_dict({"time/epoch_s": self._train, "time/val_s": self._val})

    def state_dict(self) -> dict:
        return {"epoch_seconds": self.epoch_seconds, "val_seconds": self.val_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.val_seconds = list(state_dict.get("val_seconds", []))  # checkpoints before val_seconds existed


class TestReport(pl.Callback):
    """At test end: a confusion-matrix figure and a grid of misclassified test digits.

    Both go to TensorBoard (when it is a logger) and to PNG files in `output_dir`.

    Args:
        output_dir: where the PNGs are written.
        max_misclassified: how many wrong digits the grid shows (the first ones in test order).
    """

    def __init__(self, output_dir: str, max_misclassified: int = 36) -> None:
        self.output_dir = Path(output_dir)
        self.max_misclassified = max_misclassified
        self.confusion: torch.Tensor | None = None
        self.wrong: list[tuple[torch.Tensor, int, int]] = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.confusion, self.wrong = None, []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        x, y = batch
        preds = outputs["logits"].argmax(1)
        k = outputs["logits"].shape[1]
        counts = torch.bincount(y * k + preds, minlength=k * k).reshape(k, k)  # rows: true, cols: predicted
        self.confusion = counts if self.confusion is None else self.confusion + counts
        if len(self.wrong) < self.max_misclassified:
            idx = (preds != y).nonzero().flatten()[: self.max_misclassified - len(self.wrong)].cpu()
            x, y, preds = x.cpu(), y.cpu(), preds.cpu()
            self.wrong += [(x[i, 0], int(y[i]), int(preds[i])) for i in idx]

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.confusion is not None and trainer.world_size > 1:  # DDP: every rank holds a shard's counts
            self.confusion = trainer.strategy.reduce(self.confusion, reduce_op="sum")
        if self.confusion is None or not trainer.is_global_zero:
            return
        figures = {"test/confusion_matrix": confusion_figure(self.confusion.cpu())}
        if self.wrong:
            figures["test/misclassified"] = misclassified_figure(self.wrong)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for tag, fig in figures.items():
            fig.savefig(self.output_dir / f"{tag.split('/')[1]}.png", dpi=100)
            for lg in tensorboards:
                lg.experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)
            plt.close(fig)


def confusion_figure(confusion: torch.Tensor) -> plt.Figure:
    """A (K, K) count matrix (rows true, columns predicted) as an annotated heat map."""
    k = confusion.shape[0]
    fig, ax = plt.subplots(figsize=(0.55 * k + 2, 0.55 * k + 1.5))
    ax.imshow(confusion.log1p(), cmap="Blues")
    for i in range(k):
        for j in range(k):
            v = int(confusion[i, j])
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true")
    acc = confusion.diag().sum().item() / max(confusion.sum().item(), 1)
    ax.set_title(f"test confusion matrix (acc {acc:.2%})")
    fig.tight_layout()
    return fig


def misclassified_figure(wrong: list[tuple[torch.Tensor, int, int]]) -> plt.Figure:
    """Wrongly classified digits, each titled with its true and predicted label."""
    cols = min(len(wrong), 9)
    rows = (len(wrong) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.35 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, true, pred) in zip(axes.flat, wrong):
        ax.imshow(img.float(), cmap="gray")
        ax.set_title(f"true {true} / pred {pred}", fontsize=7)
    fig.tight_layout()
    return fig
