"""MNIST's own file format: IDX arrays (raw or gzip), and the four-file IDX dataset source."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from mnist_lab.data.sources import Splits, dataset_class
from mnist_lab.errors import DataError

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

    def _download(self, cls: type) -> list[Path] | None:
        cls(root=str(self.root), train=True, download=True)
        cls(root=str(self.root), train=False, download=True)
        return self._find(self.root / cls.__name__ / "raw")

    def train_count(self) -> int | None:
        """The number of training images, from the 8-byte header of the train-images file; None when
        the file is missing or unreadable (load() then says why)."""
        files = self._find(self.root)
        if files is None and self.download:  # an earlier download, where load() looks for it
            files = self._find(self.root / self.download.rpartition(".")[2] / "raw")
        if files is None:
            return None
        try:
            with (gzip.open if files[0].suffix == ".gz" else open)(files[0], "rb") as f:
                head = f.read(8)  # magic (00 00, type, rank), then the first dimension: the count
        except (OSError, EOFError, zlib.error):
            return None
        if len(head) < 8 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES or head[3] == 0:
            return None
        return struct.unpack(">I", head[4:8])[0]

    def load(self) -> Splits:
        files = self._find(self.root)
        if files is None and self.download:
            cls = dataset_class(self.download, "data.source.download")  # a bad name is a config error, not a download's
            cached = self._find(self.root / cls.__name__ / "raw")
            try:
                files = cached or self._download(cls)
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
