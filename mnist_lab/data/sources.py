"""Dataset sources: anything with `load() -> Splits`, the raw splits that DigitsDataModule prepares.

`IDXSource` (mnist_lab/data/idx.py) reads MNIST's own files. Sets without an official split
extend `HeldOutTestSource`: `UCIDigitsSource` (the 8x8 UCI digits that scikit-learn ships),
and the text files that the repository bundles (mnist_lab/data/text_digits.py: Semeion,
USPS). `TorchvisionSource` takes any torchvision dataset class: local files first, then a
download; a new torchvision dataset is a YAML file (see conf/data/usps_download.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from hydra.utils import get_object

from mnist_lab.data.mnist_form import to_mnist_form
from mnist_lab.data.sampling import stratified_sample
from mnist_lab.errors import ConfigError, DataError


@dataclass
class Splits:
    """A dataset as uint8 images (N, C, 28, 28) and int64 labels; `val` is optional."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


def dataset_class(path: str, key: str) -> type:
    """The dataset class at the import path `path`, which config key `key` gave; a ConfigError if there is none."""
    hydra_log = logging.getLogger("hydra.utils")  # get_object logs each failure (3 lines) before raising it
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # the ConfigError below says it once, in one paragraph
    try:
        found = get_object(path)
    except Exception as e:  # ImportError, AttributeError, ValueError: a misspelt or missing name
        reason = " ".join(str(e).split())  # Hydra's message spans three lines
    else:
        if isinstance(found, type):
            return found
        reason = f"it is a {type(found).__name__}, not a class"
    finally:
        hydra_log.setLevel(level)
    raise ConfigError(
        f"{key}={path} is not an importable dataset class ({reason}). Give the import path of a dataset "
        "class, e.g. torchvision.datasets.MNIST."
    )


class Source(Protocol):
    """Loads the raw splits. A source may also have `train_count() -> int | None`: the training
    split's size (before data.val_size is held out) without loading it, for the config check."""

    def load(self) -> Splits: ...


class HeldOutTestSource:
    """A set without an official split, in MNIST's form, with a fixed stratified test split held out.

    Subclasses give `images()`: every image as float (N, 1, H, W) in [0, 1], ink high (as in
    MNIST), and int64 labels. Each is prepared as MNIST was, by the arithmetic predict uses on
    image files (mnist_form.fit_to_box): cropped to its ink, fitted into a box x box square
    keeping its aspect ratio, centred by mass in 28x28.

    Args:
        test_fraction: share of every class held out as the test split.
        split_seed: seeds the train/test split (the test set stays fixed when only the
            training seed or data.split_seed changes).
        box: the square the digit is fitted into (MNIST: 20).
    """

    def __init__(self, test_fraction: float = 0.2, split_seed: int = 0, box: int = 20) -> None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"data.source.test_fraction={test_fraction}: it must be between 0 and 1.")
        self.test_fraction, self.split_seed, self.box = test_fraction, split_seed, box

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def load(self) -> Splits:
        images, labels = self.images()
        x = to_mnist_form(images, box=self.box, center=True, polarity="keep")  # (N, 1, 28, 28) uint8
        counts = {int(c): round(self.test_fraction * int(n)) for c, n in zip(*labels.unique(return_counts=True))}
        test = stratified_sample(labels, counts, torch.Generator().manual_seed(self.split_seed))
        train = torch.ones(len(labels), dtype=torch.bool).index_fill_(0, test, False).nonzero().flatten()
        return Splits(x[train], labels[train], x[test], labels[test])


class UCIDigitsSource(HeldOutTestSource):
    """The 1,797 UCI optical-recognition digits (8x8, 0..16) that scikit-learn ships, as MNIST.

    Args:
        test_fraction, split_seed, box: see HeldOutTestSource.
    """

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits  # ships the data file: no download

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8) in [0, 1]
        return images, torch.as_tensor(digits.target, dtype=torch.int64)


class TorchvisionSource:
    """Any torchvision dataset class as uint8 (N, 1, 28, 28): its local files first, then a download.

    Args:
        dataset: import path of the class, e.g. torchvision.datasets.USPS.
        root: the directory passed to it (torchvision's own layout below it).
        args: keyword arguments for both splits (e.g. {split: digits} for EMNIST).
        train_args: keyword arguments selecting the training split ({train: true}, or {split: train}).
        test_args: the same for the test split.
        download: download when the local files are missing.
        transpose: swap height and width (EMNIST stores its images transposed).
        box, center, polarity: how the images are brought to MNIST's form (see to_mnist_form).
        label_offset: subtracted from every label (EMNIST letters count from 1).
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        args: Mapping[str, Any] | None = None,
        train_args: Mapping[str, Any] | None = None,
        test_args: Mapping[str, Any] | None = None,
        download: bool = True,
        transpose: bool = False,
        box: int = 28,
        center: bool = False,
        polarity: str = "keep",
        label_offset: int = 0,
    ) -> None:
        self.dataset, self.root = dataset, Path(root)
        self.args = dict(args or {})
        self.train_args = dict(train_args if train_args is not None else {"train": True})
        self.test_args = dict(test_args if test_args is not None else {"train": False})
        self.download, self.transpose = download, transpose
        self.box, self.center, self.polarity, self.label_offset = box, center, polarity, label_offset

    def _open(self, split_args: Mapping[str, Any]):
        cls = dataset_class(self.dataset, "data.source.dataset")
        class_name = cls.__name__
        kwargs = {**self.args, **split_args}
        try:
            return cls(root=str(self.root), download=False, **kwargs)
        except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted"
            local_error = e
        if not self.download:
            reason = f"downloading is disabled (data.source.download: false); {class_name} said: {local_error}"
        else:
            try:
                return cls(root=str(self.root), download=True, **kwargs)
            except Exception as e:  # no network, a moved mirror, a full disk: all end the same
                reason = f"downloading it failed ({type(e).__name__}: {e})"
        raise DataError(
            f"{class_name} ({kwargs}) is not in {self.root}, and {reason}. Run once with internet access (it "
            f"downloads into {self.root}), or copy the dataset's files there in torchvision's layout, or point "
            "data.source.root at a directory that holds them."
        )

    def _arrays(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        data = getattr(ds, "data", None)
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = getattr(ds, "labels", None)
        if data is None or targets is None:  # generic fallback: one item at a time (slow, any dataset)
            items = [ds[i] for i in range(len(ds))]
            data = np.stack([np.asarray(img) for img, _ in items])
            targets = [t for _, t in items]
        x = torch.as_tensor(np.asarray(data))
        if x.ndim == 3:  # (N, H, W)
            x = x.unsqueeze(1)
        elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # (N, H, W, C), e.g. CIFAR
            x = x.permute(0, 3, 1, 2)
        if x.ndim != 4:
            raise DataError(f"{self.dataset} gave images of shape {tuple(x.shape)}; expected (N, [C,] H, W).")
        if self.transpose:
            x = x.transpose(-1, -2)
        y = torch.as_tensor(np.asarray(targets), dtype=torch.int64).flatten() - self.label_offset
        return to_mnist_form(x, box=self.box, center=self.center, polarity=self.polarity), y

    def load(self) -> Splits:
        train_x, train_y = self._arrays(self._open(self.train_args))
        test_x, test_y = self._arrays(self._open(self.test_args))
        return Splits(train_x, train_y, test_x, test_y)
