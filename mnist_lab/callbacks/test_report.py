"""At test end: the confusion matrix and the misclassified digits, as figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown

import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from torchmetrics.functional.classification import multiclass_confusion_matrix  # noqa: E402


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
        counts = multiclass_confusion_matrix(preds, y, outputs["logits"].shape[1])  # rows: true, cols: predicted
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
