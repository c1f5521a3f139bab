"""The one LightningDataModule: any source, split, subset and batched in memory, normalised per batch.

The article's pipeline (torchvision MNIST -> PIL -> ToTensor -> Normalize -> DataLoader)
spends most of an epoch converting one image at a time. Here each split is one uint8 tensor
(N, C, 28, 28); a batch is one index operation, and the float conversion, augmentation and
normalisation run once per batch on the training device (`on_after_batch_transfer`).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from mnist_lab.data.augment import RandomAffine
from mnist_lab.data.batches import TensorBatches
from mnist_lab.data.pixels import normalize
from mnist_lab.data.sampling import stratified_sample
from mnist_lab.data.sources import Source, Splits
from mnist_lab.errors import ConfigError


class DigitsDataModule(pl.LightningDataModule):
    """Any `Source` split, subset and batched in memory; normalised per batch on the device.

    Args:
        source: loads the raw splits.
        num_classes: number of labels (the model's head size follows it).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (conf/data/base.yaml says why 256 on CPU).
        val_size: images held out of the training split for validation, when the source has
            no validation split of its own.
        split_seed: draws which images are held out for validation and which are labelled
            (labels_per_class): the split alone, the same for every training seed.
        seed: draws the order of every training epoch (conf/data/base.yaml: the run's `seed`);
            None takes split_seed, as a saved config without this key did.
        labels_per_class: keep only this many training images per class (stratified), or null.
        train_size: keep only the first N training images after the split, or null (tests, scaling).
        mean, std: normalisation of [0, 1] pixels, as the article's Normalize(0.1307, 0.3081).
        augment: a RandomAffine (or RandomElastic) applied to training batches, or null.
        on_device: keep all three splits on the training device (e.g. a GPU's memory: MNIST
            as uint8 is 55 MB) and index batches there, so no batch is copied from the host.
            On CPU it changes nothing. The shuffling order is drawn on the CPU as before, so
            a run's batches are the same either way.
    """

    def __init__(
        self,
        source: Source,
        num_classes: int = 10,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_size: int = 5000,
        split_seed: int = 0,
        labels_per_class: int | None = None,
        train_size: int | None = None,
        mean: float = 0.1307,
        std: float = 0.3081,
        augment: RandomAffine | None = None,
        on_device: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()  # value ranges are checked with the config (mnist_lab/config/validate.py)
        self.source, self.num_classes = source, num_classes
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.seed = split_seed if seed is None else seed
        self.labels_per_class, self.train_size = labels_per_class, train_size
        self.mean, self.std, self.augment = mean, std, augment
        self.on_device = on_device
        self.splits: Splits | None = None
        self._placed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> (x, y) on the device
        self._train_batches: TensorBatches | None = None
        self._train_state: dict[str, int] | None = None  # from a checkpoint, for _train_batches

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        raw = self.source.load()
        g = torch.Generator().manual_seed(self.split_seed)
        if raw.val_x is None:
            if self.val_size >= len(raw.train_y):
                raise ConfigError(
                    f"data.val_size={self.val_size} leaves no training data: the training split has "
                    f"{len(raw.train_y)} images. Use a smaller val_size."
                )
            order = torch.randperm(len(raw.train_y), generator=g)
            val_idx, train_idx = order[: self.val_size].sort().values, order[self.val_size :].sort().values
            raw.val_x, raw.val_y = raw.train_x[val_idx], raw.train_y[val_idx]
            raw.train_x, raw.train_y = raw.train_x[train_idx], raw.train_y[train_idx]
        if self.labels_per_class is not None:
            keep = stratified_subset(raw.train_y, self.labels_per_class, self.num_classes, g)
            raw.train_x, raw.train_y = raw.train_x[keep], raw.train_y[keep]
        if self.train_size is not None:
            raw.train_x, raw.train_y = raw.train_x[: self.train_size], raw.train_y[: self.train_size]
        bad = raw.train_y[(raw.train_y < 0) | (raw.train_y >= self.num_classes)]
        if len(bad):
            raise ConfigError(
                f"data.num_classes={self.num_classes} but the training labels include {bad[0].item()}: "
                "set num_classes to the dataset's number of labels (or fix the source's label_offset)."
            )
        self.splits = raw

    def _shard(self) -> dict[str, Any]:
        """This process's place among the DDP ranks ({} without a trainer)."""
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size} if self.trainer else {}

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the train/val/test split: on the training device if on_device, else as loaded."""
        x, y = getattr(self.splits, f"{name}_x"), getattr(self.splits, f"{name}_y")
        if not self.on_device or self.trainer is None:
            return x, y
        device = self.trainer.strategy.root_device
        if name not in self._placed or self._placed[name][0].device != device:
            self._placed[name] = (x.to(device), y.to(device))  # once per run, not per batch
        return self._placed[name]

    def train_dataloader(self) -> TensorBatches:
        if self._train_batches is None:  # one object for the whole run: it carries the epoch
            self._train_batches = TensorBatches(
                *self._split("train"), self.batch_size, True, self.seed, **self._shard()
            )
            if self._train_state is not None:
                self._train_batches.load_state_dict(self._train_state)
        return self._train_batches

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._split("val"), self.eval_batch_size, False, **self._shard())

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._split("test"), self.eval_batch_size, False, **self._shard())

    def normalize(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float (mnist_lab.data.pixels), augmented if asked."""
        return normalize(x, self.mean, self.std, self.augment if augment else None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return self.normalize(x, augment=self.trainer is not None and self.trainer.training), y

    def state_dict(self) -> dict:
        # The training order's position (Lightning saves the loader's state too, but restores
        # it only if nothing built the loader before the restore, and OneCycleLR's
        # trainer.estimated_stepping_batches does: a resumed run would restart the epoch).
        return {"train_batches": self._train_batches.state_dict()} if self._train_batches is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_state = state_dict.get("train_batches")
        if self._train_batches is not None and self._train_state is not None:
            self._train_batches.load_state_dict(self._train_state)


def stratified_subset(labels: torch.Tensor, per_class: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """Indices of exactly `per_class` randomly chosen examples of each class, sorted."""
    counts = torch.bincount(labels, minlength=num_classes)
    if per_class < 1 or per_class > counts.min():
        raise ConfigError(
            f"data.labels_per_class={per_class} but the training split has as few as {counts.min().item()} "
            f"images of class {counts.argmin().item()} (counts {counts.tolist()}). "
            f"Use a value between 1 and {counts.min().item()}, or null for all labels."
        )
    return stratified_sample(labels, dict.fromkeys(range(num_classes), per_class), g)
