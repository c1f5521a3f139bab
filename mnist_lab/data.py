"""Datasets held in memory as uint8 tensors, batched by indexing, normalised on the device.

The article's pipeline (torchvision MNIST -> PIL -> ToTensor -> Normalize -> DataLoader)
spends most of an epoch converting one image at a time. Here each split is one uint8 tensor
(N, C, 28, 28); a batch is one index operation, and the float conversion, augmentation and
normalisation run once per batch on the training device (`on_after_batch_transfer`).

A dataset is a *source* (anything with `load() -> Splits`) plus the shared DataModule that
splits, subsets and batches it. A new IDX dataset is a YAML file with an `IDXSource`.
"""

from __future__ import annotations

import gzip
import importlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mnist_lab.errors import ConfigError, DataError

# IDX type codes (LeCun's format description) -> torch dtype, element size in bytes.
_IDX_TYPES = {
    0x08: (torch.uint8, 1),
    0x09: (torch.int8, 1),
    0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4),
    0x0D: (torch.float32, 4),
    0x0E: (torch.float64, 8),
}


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """Read one IDX file (raw or .gz) into a tensor, checking magic number, rank and size.

    Args:
        path: the file.
        ndim: the rank the caller expects (3 for images, 1 for labels), checked if given.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib: a damaged deflate stream
        raise DataError(f"Cannot read the IDX file {path}: {e}. Replace it with an intact copy.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"{path} is not an IDX file: its first four bytes are {raw[:4].hex() or 'missing'}, "
            "an IDX file starts with 00 00, a type code (08 for uint8) and its rank. "
            "Replace it with the original dataset file."
        )
    dtype, size = _IDX_TYPES[raw[2]]
    rank = raw[3]
    if ndim is not None and rank != ndim:
        raise DataError(
            f"{path} holds a rank-{rank} IDX array where a rank-{ndim} one was expected "
            f"({'images' if ndim == 3 else 'labels'}): are the image and label files swapped?"
        )
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} bytes). Replace it.")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    expected = header + math.prod(dims) * size
    if len(raw) != expected:
        raise DataError(
            f"{path} is {len(raw)} bytes but its header promises {expected} (dims {dims}): the file is "
            f"{'truncated' if len(raw) < expected else 'longer than its header says'}. "
            "Replace it with an intact copy."
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    if size > 1:  # IDX is big-endian; numbers wider than a byte need swapping.
        data = data.view(-1, size).flip(1).reshape(-1)
    return data.view(dtype).reshape(dims).clone() if size > 1 else data.reshape(dims)


@dataclass
class Splits:
    """A dataset as uint8 images (N, C, 28, 28) and int64 labels; `val` is optional."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


class Source(Protocol):
    def load(self) -> Splits: ...


def _check_pair(images: torch.Tensor, labels: torch.Tensor, names: tuple[Path, Path]) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{names[0]} holds {images.shape[0]} images but {names[1]} holds {labels.shape[0]} labels: "
            "the two files come from different datasets or one is damaged. Replace them."
        )
    if images.dtype != torch.uint8:
        raise DataError(f"{names[0]} holds {images.dtype} values; images must be uint8 (IDX type 08).")


class IDXSource:
    """A dataset stored as four IDX files (raw or gzip), MNIST's own format.

    Args:
        root: directory holding the files.
        train_images, train_labels, test_images, test_labels: file names without `.gz`.
        download: import path of a torchvision dataset class (e.g. `torchvision.datasets.MNIST`)
            tried when the files are absent; its raw files are then read. None disables it.
        label_offset: subtracted from every label (EMNIST letters count from 1).
    """

    def __init__(
        self,
        root: str,
        train_images: str = "train-images-idx3-ubyte",
        train_labels: str = "train-labels-idx1-ubyte",
        test_images: str = "t10k-images-idx3-ubyte",
        test_labels: str = "t10k-labels-idx1-ubyte",
        download: str | None = None,
        label_offset: int = 0,
    ) -> None:
        self.root = Path(root)
        self.names = (train_images, train_labels, test_images, test_labels)
        self.download = download
        self.label_offset = label_offset

    def _find(self, directory: Path) -> list[Path] | None:
        found = []
        for name in self.names:
            candidates = [directory / name, directory / f"{name}.gz"]
            hit = next((p for p in candidates if p.is_file()), None)
            if hit is None:
                return None
            found.append(hit)
        return found

    def _download(self) -> list[Path] | None:
        module_name, _, class_name = self.download.rpartition(".")
        dataset_class = getattr(importlib.import_module(module_name), class_name)
        dataset_class(root=str(self.root), train=True, download=True)
        dataset_class(root=str(self.root), train=False, download=True)
        return self._find(self.root / class_name / "raw")

    def load(self) -> Splits:
        files = self._find(self.root)
        if files is None and self.download:
            cached = self._find(self.root / self.download.rpartition(".")[2] / "raw")
            try:
                files = cached or self._download()
            except Exception as e:  # no network, a moved mirror, a full disk: all end the same
                reason = f"downloading with {self.download} failed too ({type(e).__name__}: {e})"
            else:
                reason = f"{self.download} downloaded nothing usable"
        else:
            reason = "downloading is disabled for this dataset (data.source.download: null)"
        if files is None:
            expected = ", ".join(f"{n}[.gz]" for n in self.names)
            raise DataError(
                f"Dataset files not found in {self.root} (expected {expected}), and {reason}. "
                f"Copy the files into {self.root}, or point data.source.root at the directory that "
                "holds them; for MNIST the repository ships them in data/mnist."
            )
        train_x, train_y, test_x, test_y = (read_idx(f, ndim) for f, ndim in zip(files, (3, 1, 3, 1)))
        _check_pair(train_x, train_y, (files[0], files[1]))
        _check_pair(test_x, test_y, (files[2], files[3]))
        return Splits(
            train_x.unsqueeze(1),  # (N, 1, 28, 28)
            train_y.long() - self.label_offset,
            test_x.unsqueeze(1),
            test_y.long() - self.label_offset,
        )


class RandomAffine(torch.nn.Module):
    """Per-sample random rotation, translation and scale of a (B, C, H, W) float batch.

    torchvision's v2.RandomAffine draws one transform per call, so on a batch tensor every
    image would get the same one; per-sample transforms through it would mean a Python loop
    over the batch. One affine_grid + grid_sample call does the whole batch on the device.

    Args:
        degrees: rotation drawn uniformly from [-degrees, degrees].
        translate: shift drawn uniformly from [-translate, translate] of the image size, per axis.
        scale: zoom factor drawn uniformly from [scale[0], scale[1]].
    """

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if degrees < 0 or not 0 <= translate < 1 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(
                f"data.augment has degrees={degrees}, translate={translate}, scale={list(scale)}; "
                "degrees must be >= 0, translate in [0, 1) and scale a [min, max] pair with 0 < min <= max."
            )
        self.degrees, self.translate, self.scale = degrees, translate, tuple(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        kw = dict(device=x.device, dtype=x.dtype)
        angle = (torch.rand(b, **kw) * 2 - 1) * math.radians(self.degrees)
        zoom = torch.empty(b, **kw).uniform_(*self.scale)
        shift = (torch.rand(b, 2, **kw) * 2 - 1) * (2 * self.translate)  # grid coords span 2
        # theta maps output coordinates to input ones, hence the inverse zoom.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class TensorBatches:
    """Batches of an in-memory (x, y) pair: one index op per batch, no per-sample work.

    Shuffling uses a generator seeded with (seed, epoch), so the order of every epoch is a
    function of the config alone. The iterator is stateful (Lightning saves its state in
    checkpoints), so a run resumed mid-epoch sees the remaining batches of the same order.

    Under DDP each rank takes every world_size-th sample of that order (Lightning adds no
    sampler to a non-DataLoader). Evaluation shards are not padded, so every sample counts
    exactly once in the synchronised metrics; training shards are padded by wrapping around
    (as DistributedSampler does), so every rank runs the same number of steps.

    Args:
        x, y: images (N, C, H, W) and labels (N,).
        batch_size: samples per batch (per rank).
        shuffle: a new order every epoch (training) or the stored order (evaluation).
        seed: seeds the shuffling.
        rank, world_size: this process's shard of the samples (0, 1 without DDP).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # epoch of the next pass
        self._skip = 0  # batches already consumed of that pass (set by load_state_dict)
        self._served = 0

    def _shard_size(self) -> int:
        n, w = len(self.y), self.world_size
        return math.ceil(n / w) if self.shuffle else len(range(self.rank, n, w))

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        # Counted when the pass starts: Lightning takes len(self) batches and never asks for
        # the next one, so code after the loop below would not run and every epoch would
        # repeat the first epoch's order.
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            if self.world_size > 1:  # pad by wrapping around, then every world_size-th sample
                order = order.repeat(math.ceil(self.world_size * self._shard_size() / n))
                order = order[: self.world_size * self._shard_size()][self.rank :: self.world_size]
        elif self.world_size > 1:
            order = torch.arange(self.rank, n, self.world_size)
        else:
            order = None
        if order is not None:  # drawn on the CPU (the same order on every device), used where x is
            order = order.to(self.x.device)
        start, self._served = self._skip, self._skip
        self._skip = 0
        for i in range(start, len(self)):
            self._served = i + 1
            if order is None:
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.x[sl], self.y[sl]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, int]:
        if self._skip:  # loaded, not iterated yet
            return {"epoch": self.epoch, "served": self._skip}
        if 0 < self._served < len(self):  # mid-pass: that pass again, without its served batches
            return {"epoch": self.epoch - 1, "served": self._served}
        return {"epoch": self.epoch, "served": 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._skip = state["epoch"], state["served"]


class DigitsDataModule(pl.LightningDataModule):
    """Any `Source` split, subset and batched in memory; normalised per batch on the device.

    Args:
        source: loads the raw splits.
        num_classes: number of labels (the model's head size follows it).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (conf/data/mnist.yaml says why 256 on CPU).
        val_size: images held out of the training split for validation, when the source has
            no validation split of its own.
        split_seed: seeds the train/val split and the labels_per_class subset.
        labels_per_class: keep only this many training images per class (stratified), or null.
        train_size: keep only the first N training images after the split, or null (tests, scaling).
        mean, std: normalisation of [0, 1] pixels, as the article's Normalize(0.1307, 0.3081).
        augment: a RandomAffine applied to training batches, or null.
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
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name}={value} is not a batch size: it must be a positive integer.")
        if val_size < 0 or std <= 0:
            raise ConfigError(f"data.val_size={val_size}, data.std={std}: val_size must be >= 0 and std > 0.")
        self.source, self.num_classes = source, num_classes
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
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

    def _shard(self) -> dict[str, int]:
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
                *self._split("train"), self.batch_size, True, self.split_seed, **self._shard()
            )
            if self._train_state is not None:
                self._train_batches.load_state_dict(self._train_state)
        return self._train_batches

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._split("val"), self.eval_batch_size, False, **self._shard())

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._split("test"), self.eval_batch_size, False, **self._shard())

    def normalize(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, as ToTensor() then Normalize(mean, std)."""
        x = x.float().div_(255)
        if augment and self.augment is not None:
            x = self.augment(x)
        return x.sub_(self.mean).div_(self.std)

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
    order = torch.randperm(len(labels), generator=g)
    picked = [order[labels[order] == c][:per_class] for c in range(num_classes)]
    return torch.cat(picked).sort().values
