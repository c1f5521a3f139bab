"""Semi-supervised fine-tuning: the target's unlabelled images train the network too (FixMatch).

FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency
and Confidence"): each unlabelled image is seen twice, under a weak augmentation (small shifts
and rotations) and a strong one (zoom and an elastic bend as well). Where the network's prediction on
the weak view is confident (max softmax >= threshold), that prediction is the pseudo-label of
the strong view, trained with cross-entropy at `weight` beside the labelled loss; `ratio`
unlabelled images per labelled one in each step. Chosen over domain-adversarial methods
(DANN, CDAN) because it needs no extra network or loss schedule: a pretrained classifier that
is already right on most target images (zero-shot 84-98% here) supplies its own labels, and
the confidence threshold keeps its mistakes out of the loss. Distribution alignment (Berthelot
et al. 2020, ReMixMatch) keeps the pseudo-labels from favouring the classes it is surest of.

The strategy is a `FineTune` with a few more keys, so groups, freezing, learning rates,
schedules and resume state work as for every supervised strategy (conf/finetune/fixmatch.yaml
extends discriminative_lr). Batch-norm statistics adapt to the target by themselves where the model has
batch norm in trained groups: the unlabelled batches run through the network in training mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from mnist_lab.classifier import Classifier
from mnist_lab.finetune import FineTune


class FixMatch(FineTune):
    """A fine-tune strategy that also trains on the target's unlabelled images with FixMatch.

    Args:
        threshold: the least max-softmax on the weak view for its prediction to become a pseudo-label.
        ratio: unlabelled images per labelled one in each step (FixMatch's mu).
        weight: the unlabelled loss's weight beside the labelled loss (FixMatch's lambda_u).
        weak, strong: the two augmentations of a [0, 1] float batch (mnist_lab.data.augment).
        align: distribution alignment (Berthelot et al. 2020, ReMixMatch): divide the weak view's
            class probabilities by their running mean over unlabelled batches (renormalised) before
            thresholding, so classes the pretrained network is less sure of still get pseudo-labels.
        checkpoint ... unfrozen_lr_scale: as in mnist_lab.finetune.FineTune.
    """

    def __init__(
        self,
        threshold: float = 0.95,
        ratio: int = 7,
        weight: float = 1.0,
        weak: nn.Module | None = None,
        strong: nn.Module | None = None,
        align: bool = True,
        checkpoint: str | None = None,
        lr_scale: float = 1.0,
        frozen: Sequence[str] = (),
        unfreeze: Mapping[int, Sequence[str]] | None = None,
        group_lr: Mapping[str, float] | None = None,
        layer_decay: float | None = None,
        on_plateau: Mapping[str, Any] | None = None,
        train_frozen_bn: bool = False,
        unfrozen_lr_scale: float = 1.0,
    ) -> None:
        super().__init__(
            checkpoint,
            lr_scale,
            frozen,
            unfreeze,
            group_lr,
            layer_decay,
            on_plateau,
            train_frozen_bn,
            unfrozen_lr_scale,
        )
        # Ranges are checked with the config (mnist_lab/config/rules.py: finetune.threshold, ...).
        self.threshold, self.ratio, self.weight = float(threshold), int(ratio), float(weight)
        self.weak, self.strong, self.align = weak, strong, align


class SemiSupervisedClassifier(Classifier):
    """The Classifier, plus FixMatch's unlabelled loss; logs train/unlabelled_loss and the pseudo-labels taken.

    Training batches are {"labelled": (x, y), "unlabelled": {"weak", "strong", "hidden"}}
    (DigitsDataModule.use_unlabelled); "labelled" is absent with labels_per_class=0. The hidden
    labels only measure how many pseudo-labels are right (train/pseudo_label_acc), never a loss.

    Args: as Classifier; `finetune` is a FixMatch.
    """

    finetune: FixMatch
    class_prior: torch.Tensor  # a buffer, registered in __init__

    # Weight of the past in the running mean of the weak views' class probabilities: about the
    # last 10 batches, short enough to follow a 100-step fine-tuning run.
    ALIGN_MOMENTUM = 0.9

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Epoch means: short fine-tuning runs end before trainer.log_every_n_steps (200) would
        # write a per-step value.
        self.unlabelled_loss, self.pseudo_share, self.pseudo_acc = MeanMetric(), MeanMetric(), MeanMetric()
        # A buffer: saved in checkpoints, so a resumed run aligns as an uninterrupted one. Starts
        # uniform (no correction) until the first unlabelled batch.
        num_classes = int(kwargs.get("num_classes", 10))  # Classifier's default
        self.register_buffer("class_prior", torch.full((num_classes,), 1.0 / num_classes))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        fm = self.finetune
        loss = super().training_step(batch["labelled"], batch_idx) if "labelled" in batch else None
        u = batch["unlabelled"]
        with torch.no_grad():  # the pseudo-labels are targets: no gradient through them
            probs = F.softmax(self(u["weak"]), dim=1)
            if fm.align:  # towards balanced classes (all targets here have about equal class counts)
                self.class_prior.mul_(self.ALIGN_MOMENTUM).add_(probs.mean(0), alpha=1 - self.ALIGN_MOMENTUM)
                probs = probs / self.class_prior
                probs = probs / probs.sum(1, keepdim=True)
            confidence, pseudo = probs.max(dim=1)
            taken = (confidence >= fm.threshold).float()
        # Mean over all unlabelled images, taken or not (FixMatch's eq. 4): the loss grows as more
        # pseudo-labels pass the threshold.
        unlabelled_loss = (F.cross_entropy(self(u["strong"]), pseudo, reduction="none") * taken).mean()
        self.unlabelled_loss.update(unlabelled_loss.detach())
        self.pseudo_share.update(taken.mean())
        if taken.sum() > 0:
            self.pseudo_acc.update((pseudo == u["hidden"]).float(), weight=taken)  # hidden labels: log only
        self.log("train/unlabelled_loss", self.unlabelled_loss, on_step=False, on_epoch=True)
        self.log("train/pseudo_label_share", self.pseudo_share, on_step=False, on_epoch=True)
        self.log("train/pseudo_label_acc", self.pseudo_acc, on_step=False, on_epoch=True)
        weighted = fm.weight * unlabelled_loss
        return weighted if loss is None else loss + weighted
