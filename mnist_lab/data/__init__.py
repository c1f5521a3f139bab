"""Datasets in memory as uint8 tensors, batched by indexing, normalised per batch on the device.

A dataset is a *source* (anything with `load() -> Splits`: sources.py, idx.py, text_digits.py)
plus the one DataModule (datamodule.py) that splits, subsets and batches it (batches.py),
augments (augment.py) and normalises (pixels.py) on the device. Other digit images are first brought
into MNIST's form (mnist_form.py). A new dataset is a YAML file in conf/data/.

The names below are imported on first use, so that `mnist_lab.data.pixels` (used by the
ONNX-only prediction path) does not import Lightning.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "DigitsDataModule": "datamodule",
    "stratified_subset": "datamodule",
    "TensorBatches": "batches",
    "RandomAffine": "augment",
    "RandomElastic": "augment",
    "IDXSource": "idx",
    "read_idx": "idx",
    "Splits": "sources",
    "Source": "sources",
    "HeldOutTestSource": "sources",
    "UCIDigitsSource": "sources",
    "TorchvisionSource": "sources",
    "SemeionSource": "text_digits",
    "USPSTextSource": "text_digits",
    "to_mnist_form": "mnist_form",
    "stratified_sample": "sampling",
    "normalize": "pixels",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
