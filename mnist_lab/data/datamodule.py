"""The one LightningDataModule: any source, split, subset and batched in memory, normalised per batch.

The article's pipeline (torchvision MNIST -> PIL -> ToTensor -> Normalize -> DataLoader)
spends most of an epoch converting one image at a time. Here each split is one uint8 tensor
(N, C, 28, 28); a batch is one index operation, and the float conversion, augmentation and
normalisation run once per batch on the training device (`on_after_batch_transfer`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader

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
        labels_per_class: keep only this many training images per class (stratified), or null;
            the rest of the training split stays available as unlabelled images (`unlabelled`),
            used when a semi-supervised strategy calls `use_unlabelled`. 0: no labels at all.
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
        # The training images left without labels by labels_per_class, with their labels kept
        # apart: only a diagnostic (pseudo-label accuracy) may read them, never a loss.
        self.unlabelled: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[Any, Any] | None = None  # (weak, strong) augmentations, set by use_unlabelled
        self._unlabelled_batch_size = 0
        self._unlabelled_batches: UnlabelledBatches | None = None
        self._unlabelled_state: dict[str, int] | None = None

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
            rest = torch.ones(len(raw.train_y), dtype=torch.bool)
            rest[keep] = False
            self.unlabelled = raw.train_x[rest], raw.train_y[rest]
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

    def use_unlabelled(self, batch_size: int, weak: Any, strong: Any) -> None:
        """Train on (labelled, unlabelled) batch pairs: `batch_size` unlabelled images per step, each seen twice.

        Each training batch becomes {"labelled": (x, y), "unlabelled": {"weak", "strong", "hidden"}}
        (no "labelled" with labels_per_class=0): the unlabelled images under the `weak` and the
        `strong` augmentation, and their hidden labels for diagnostics only.
        """
        if self.unlabelled is None or not len(self.unlabelled[1]):
            raise ConfigError(
                f"data.labels_per_class={self.labels_per_class} leaves no unlabelled training images, which a "
                "semi-supervised strategy needs: set data.labels_per_class to fewer than the smallest class holds "
                "(e.g. 10), or choose a supervised finetune strategy."
            )
        self._unlabelled_batch_size, self._views = batch_size, (weak, strong)

    def train_dataloader(self) -> TensorBatches | CombinedLoader:
        if self._train_batches is None:  # one object for the whole run: it carries the epoch
            self._train_batches = TensorBatches(
                *self._split("train"), self.batch_size, True, self.seed, **self._shard()
            )
            if self._train_state is not None:
                self._train_batches.load_state_dict(self._train_state)
        if self._views is None:
            return self._train_batches
        if self._unlabelled_batches is None:
            assert self.unlabelled is not None  # use_unlabelled checked it
            x, y = self.unlabelled
            if self.on_device and self.trainer is not None:
                device = self.trainer.strategy.root_device
                x, y = x.to(device), y.to(device)
            # An epoch is the labelled pass; with no labels, one pass over the unlabelled images.
            labelled = len(self._train_batches)
            per_epoch = labelled or math.ceil(len(y) / self._unlabelled_batch_size)
            self._unlabelled_batches = UnlabelledBatches(x, y, self._unlabelled_batch_size, per_epoch, self.seed)
            if self._unlabelled_state is not None:
                self._unlabelled_batches.load_state_dict(self._unlabelled_state)
        loaders: dict[str, Any] = {"labelled": self._train_batches} if len(self._train_batches) else {}
        # min_size: the labelled pass ends the epoch (the unlabelled stream is as long, and never cycles),
        # and "labelled" comes first, so the unlabelled stream is not advanced past the labelled end.
        loaders["unlabelled"] = self._unlabelled_batches
        return CombinedLoader(loaders, mode="min_size")

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._split("val"), self.eval_batch_size, False, **self._shard())

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._split("test"), self.eval_batch_size, False, **self._shard())

    def normalize(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float (mnist_lab.data.pixels), augmented if asked."""
        return normalize(x, self.mean, self.std, self.augment if augment else None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict):  # semi-supervised training: see use_unlabelled
            assert self._views is not None
            out: dict[str, Any] = {}
            if "labelled" in batch:
                x, y = batch["labelled"]
                out["labelled"] = self.normalize(x, augment=True), y
            u, hidden = batch["unlabelled"]
            weak, strong = self._views
            out["unlabelled"] = {
                "weak": normalize(u, self.mean, self.std, weak),
                "strong": normalize(u, self.mean, self.std, strong),
                "hidden": hidden,
            }
            return out
        x, y = batch
        return self.normalize(x, augment=self.trainer is not None and self.trainer.training), y

    def state_dict(self) -> dict:
        # The training order's position (Lightning saves the loader's state too, but restores
        # it only if nothing built the loader before the restore, and OneCycleLR's
        # trainer.estimated_stepping_batches does: a resumed run would restart the epoch).
        state = {"train_batches": self._train_batches.state_dict()} if self._train_batches is not None else {}
        if self._unlabelled_batches is not None:
            state["unlabelled_batches"] = self._unlabelled_batches.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_state = state_dict.get("train_batches")
        if self._train_batches is not None and self._train_state is not None:
            self._train_batches.load_state_dict(self._train_state)
        self._unlabelled_state = state_dict.get("unlabelled_batches")
        if self._unlabelled_batches is not None and self._unlabelled_state is not None:
            self._unlabelled_batches.load_state_dict(self._unlabelled_state)


class UnlabelledBatches:
    """An endless stream of unlabelled batches, `per_epoch` of them per pass of the training loop.

    The labelled and the unlabelled split differ in size, so the unlabelled images are an
    endless stream: batch k holds positions [k*B, (k+1)*B) of one shuffled order after another
    (order j seeded with (seed, j)), so every batch is a function of (seed, k) alone. The
    position is the state: a run resumed mid-epoch gets the same batches as an uninterrupted one.

    Args:
        x, y: unlabelled images (N, C, H, W) and their hidden labels (N,): diagnostics only.
        batch_size: images per batch.
        per_epoch: batches per training epoch (the labelled loader's length, so the two end together).
        seed: seeds the shuffled orders.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, per_epoch: int, seed: int) -> None:
        self.x, self.y, self.batch_size, self.per_epoch, self.seed = x, y, batch_size, per_epoch, seed
        self.position = 0  # batches served so far
        self._order: tuple[int, torch.Tensor] | None = None  # (pass, order): the latest one drawn

    def __len__(self) -> int:
        return self.per_epoch

    def _indices(self, k: int) -> torch.Tensor:
        n = len(self.y)
        positions = torch.arange(k * self.batch_size, (k + 1) * self.batch_size)
        passes, places = positions // n, positions % n
        out = torch.empty_like(places)
        for j in passes.unique().tolist():  # one order, or more where one ends in the batch
            if self._order is None or self._order[0] != j:
                g = torch.Generator().manual_seed(self.seed * 100_003 + j)
                self._order = (j, torch.randperm(n, generator=g))
            out[passes == j] = self._order[1][places[passes == j]]
        return out.to(self.x.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # To the end of the current epoch: a resumed run starts mid-epoch.
        end = (self.position // self.per_epoch + 1) * self.per_epoch
        while self.position < end:
            idx = self._indices(self.position)
            self.position += 1
            yield self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def stratified_subset(labels: torch.Tensor, per_class: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """Indices of exactly `per_class` randomly chosen examples of each class, sorted."""
    counts = torch.bincount(labels, minlength=num_classes)
    if per_class < 0 or per_class > counts.min():
        raise ConfigError(
            f"data.labels_per_class={per_class} but the training split has as few as {counts.min().item()} "
            f"images of class {counts.argmin().item()} (counts {counts.tolist()}). "
            f"Use a value between 0 (no labels: semi-supervised strategies only) and {counts.min().item()}, "
            "or null for all labels."
        )
    return stratified_sample(labels, dict.fromkeys(range(num_classes), per_class), g)
