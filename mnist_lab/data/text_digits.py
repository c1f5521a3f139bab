"""Digit sets stored as text, one image a line (raw or gzip): Semeion, and USPS in ESL's format.

Neither ships with a train/test split: each holds out a fixed, seeded, stratified share of
every class as its test split (`HeldOutTestSource`). The repository bundles both files
(data/semeion/, data/usps_test/; their READMEs give format, counts, md5 and licence).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from mnist_lab.data.sources import HeldOutTestSource
from mnist_lab.errors import DataError


def read_rows(path: Path, fields: int, layout: str, fix: str, spare: int = 0) -> np.ndarray:
    """The file's lines as float32 (lines, fields), each line checked for its number of fields.

    Args:
        path: the text file, gzip-compressed if its name ends in .gz.
        fields: the numbers every line holds.
        layout: how many numbers a line holds and what they are, for the error message.
        fix: the error message's last sentence: how to get an intact file.
        spare: extra trailing numbers a line may carry; they are dropped.
    """
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("ascii")
    except FileNotFoundError:
        raise DataError(f"The digits file {path} does not exist. {fix}") from None
    except EOFError as e:  # gzip: "Compressed file ended before the end-of-stream marker was reached"
        raise DataError(f"{path} is truncated: its gzip stream ends early ({e}). {fix}") from e
    except (OSError, zlib.error, UnicodeDecodeError) as e:  # not gzip, a damaged deflate stream, not text
        raise DataError(f"Cannot read {path} as gzip-compressed text ({type(e).__name__}: {e}). {fix}") from e
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        values = line.split()
        if not fields <= len(values) <= fields + spare:
            raise DataError(
                f"{path}, line {number}: {len(values)} numbers, where every line holds {layout}: the file is "
                f"truncated, damaged or in another format. {fix}"
            )
        try:
            rows.append(np.array(values[:fields], dtype=np.float32))
        except ValueError as e:
            raise DataError(f"{path}, line {number}: {e}, where every line holds {layout}. {fix}") from e
    if not rows:
        raise DataError(f"{path} is empty: it holds no digits ({layout}, one a line). {fix}")
    return np.stack(rows)


class _TextDigits(HeldOutTestSource):
    """What the text sources share: the file, its expected count, and the message that says how to replace it."""

    BUNDLED = ""  # the repository's copy, relative to the repository root
    LAYOUT = ""  # one line's fields, for error messages

    def __init__(self, path: str, count: int | None, test_fraction: float, split_seed: int, box: int) -> None:
        super().__init__(test_fraction, split_seed, box)
        self.path, self.count = Path(path), count
        self.fix = (
            f"Restore the repository's copy, {self.BUNDLED} (its md5 is in the README beside it; `git checkout -- "
            f"{self.BUNDLED}`), or point data.source.path at an intact copy."
        )

    def rows(self, fields: int, spare: int = 0) -> np.ndarray:
        """The file's lines as float32 (N, fields), their count checked against `count`."""
        rows = read_rows(self.path, fields, self.LAYOUT, self.fix, spare)
        if self.count is not None and len(rows) != self.count:
            raise DataError(
                f"{self.path} holds {len(rows)} digits but data.source.count={self.count}: the file is truncated "
                f"or another version. {self.fix} (data.source.count=null takes a file of any length.)"
            )
        return rows

    def bad(self, wrong: npt.ArrayLike, what: str) -> DataError:
        """The error for the first line where `wrong` (N,) holds: what is wrong with it, and the fix."""
        line = int(np.flatnonzero(wrong)[0])
        return DataError(
            f"{self.path}, line {line + 1}: {what}, where a line holds {self.LAYOUT}. The file is damaged or in "
            f"another format. {self.fix}"
        )


class SemeionSource(_TextDigits):
    """The 1,593 Semeion handwritten digits (UCI; 16x16 binary, ~80 writers), as MNIST.

    Args:
        path: the text file (raw or .gz): per line 256 pixels (16x16 row by row, 1 = ink),
            then the label one-hot in 10 fields.
        count: the number of digits the file must hold (a check that it is whole), or null.
        test_fraction, split_seed, box: see HeldOutTestSource.
    """

    BUNDLED = "data/semeion/semeion.data.gz"
    LAYOUT = "266 numbers: 256 pixels of 0 or 1, then the label as 10 one-hot values"

    def __init__(
        self, path: str, count: int | None = 1593, test_fraction: float = 0.2, split_seed: int = 0, box: int = 20
    ) -> None:
        super().__init__(path, count, test_fraction, split_seed, box)

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows(266)  # (N, 266)
        pixels, one_hot = rows[:, :256], rows[:, 256:]
        binary = (rows == 0) | (rows == 1)
        if not binary.all():
            raise self.bad(~binary.all(1), f"a value {rows[~binary][0]:g} that is neither 0 nor 1")
        single = one_hot.sum(1) == 1
        if not single.all():
            raise self.bad(~single, f"{int(one_hot[~single][0].sum())} ones in the label's 10 fields")
        images = torch.from_numpy(pixels.reshape(-1, 1, 16, 16))  # ink 1 on 0: already MNIST's polarity
        return images, torch.from_numpy(one_hot.argmax(1)).long()


class USPSTextSource(_TextDigits):
    """USPS zip-code digits in ESL's text format (zip.test: 2,007; zip.train: 7,291), as MNIST.

    Args:
        path: the text file (raw or .gz): per line the label (0-9), then 256 grey values
            (16x16 row by row) in [-1, 1], -1 paper, 1 ink.
        count: the number of digits the file must hold (a check that it is whole), or null.
        test_fraction, split_seed, box: see HeldOutTestSource.
    """

    BUNDLED = "data/usps_test/zip.test.gz"
    LAYOUT = "257 numbers: the label 0-9, then 256 grey values in [-1, 1]"

    def __init__(
        self, path: str, count: int | None = 2007, test_fraction: float = 0.2, split_seed: int = 0, box: int = 20
    ) -> None:
        super().__init__(path, count, test_fraction, split_seed, box)

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        # spare=1: line 2006 of ESL's zip.test carries a 258th number after its 256 pixels; the
        # image reads correctly from the first 256 (data/usps_test/README.md says how we know).
        rows = self.rows(257, spare=1)  # (N, 257)
        labels, grey = rows[:, 0], rows[:, 1:]
        digit = (labels == labels.round()) & (labels >= 0) & (labels <= 9)
        if not digit.all():
            raise self.bad(~digit, f"the label {labels[~digit][0]:g}, not a digit 0-9")
        inside = ((grey >= -1) & (grey <= 1)).all(1)
        if not inside.all():
            outside = grey[~inside][0]
            raise self.bad(~inside, f"a grey value {outside[(outside < -1) | (outside > 1)][0]:g}")
        images = torch.from_numpy((grey.reshape(-1, 1, 16, 16) + 1) / 2)  # [0, 1], ink high as in MNIST
        return images, torch.from_numpy(labels).long()
