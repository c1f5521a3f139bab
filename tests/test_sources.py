"""Fine-tuning targets: UCI digits in MNIST's form, torchvision datasets read from their own files.

The torchvision datasets cannot be downloaded here, so each test writes a few images in the
dataset's real on-disk format (IDX, EMNIST's unzipped IDX, USPS's bz2 libsvm text, SVHN's
.mat) where torchvision looks for them, and loads them through the YAML config.
"""

from __future__ import annotations

import bz2
import gzip
import struct

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from mnist_lab.data import IDXSource, TorchvisionSource, UCIDigitsSource, to_mnist_form
from mnist_lab.errors import ConfigError, DataError
from tests.conftest import compose_config


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: magic (uint8, rank), big-endian dims, data."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def digit_images(n: int, seed: int = 0, size: int = 28) -> np.ndarray:
    """n uint8 images with a bright vertical bar at a random column (left half) on black."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        c = rng.integers(2, size // 2 - 2)
        x[i, size // 4 : 3 * size // 4, c : c + 3] = 255
    return x


def load_data(name: str, data_dir, *overrides: str):
    cfg = compose_config([f"data={name}", f"paths.data_dir={data_dir}", "data.val_size=2", *overrides])
    data = instantiate(cfg.data)
    data.setup()
    return data.splits


# ----- UCI digits (scikit-learn's copy, offline) ----------------------------------------
@pytest.fixture(scope="module")
def uci():
    return UCIDigitsSource().load()


def test_uci_digits_in_mnist_form(uci):
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)  # 178, 182, 177, 183, 181, 182, 181, 179, 174, 180
    assert uci.train_x.shape == (1438, 1, 28, 28) and uci.test_x.shape == (359, 1, 28, 28)
    assert uci.train_x.dtype == torch.uint8 and uci.train_y.dtype == torch.int64
    assert uci.train_x.min() == 0 and uci.train_x.max() == 255
    test_counts = torch.bincount(uci.test_y, minlength=10)
    assert test_counts.tolist() == [round(0.2 * c) for c in counts]  # stratified 20%
    assert (torch.bincount(uci.train_y, minlength=10) + test_counts).tolist() == counts.tolist()
    x = torch.cat([uci.train_x, uci.test_x]).float()
    # MNIST's form: white ink on black (dark border), digit in the middle 20x20 box, centre of
    # mass at the centre (within the whole-pixel shift's rounding).
    ring = torch.cat(
        [x[..., :2, :].flatten(1), x[..., -2:, :].flatten(1), x[..., :2].flatten(1), x[..., -2:].flatten(1)], 1
    )
    assert ring.mean() < 2 and x.mean() > 20 * ring.mean()  # ink is inside; only shifted digits touch the rim
    assert x[..., 4:24, 4:24].mean() > 0.2 * 255
    coords = torch.arange(28)  # row and column indices: MNIST's centre of mass is (13.99, 14.01)
    mass = x.sum((1, 2, 3))
    cy = (x.sum((1, 3)) * coords).sum(1) / mass
    cx = (x.sum((1, 2)) * coords).sum(1) / mass
    # Within the whole-pixel shift's 0.5 (+ uint8 rounding), but for 2 of the 1,797 digits,
    # whose faint halo fills the frame (measured).
    assert (torch.maximum((cy - 14).abs(), (cx - 14).abs()) > 0.51).sum() <= 2
    # Fitted keeping the aspect ratio: the UCI digits are narrower than high, as MNIST's are.
    columns = (x[:, 0] > 0.5 * 255).any(1).sum(1).float()
    rows = (x[:, 0] > 0.5 * 255).any(2).sum(1).float()
    assert (columns / rows).median() < 0.9


def test_uci_split_is_seeded(uci):
    again = UCIDigitsSource().load()
    assert torch.equal(again.test_x, uci.test_x)
    other = UCIDigitsSource(split_seed=1).load()
    assert not torch.equal(other.test_y, uci.test_y)
    with pytest.raises(ConfigError, match="test_fraction"):
        UCIDigitsSource(test_fraction=1.5)


@pytest.mark.parametrize("n", [10, 50])
def test_labels_per_class_gives_exactly_n_per_class(n):
    cfg = compose_config(["data=uci_digits", f"data.labels_per_class={n}", "data.split_seed=3"])
    data = instantiate(cfg.data)
    data.setup()
    assert torch.bincount(data.splits.train_y, minlength=10).tolist() == [n] * 10
    assert len(data.splits.val_y) == 180 and len(data.splits.test_y) == 359
    assert len(set(data.splits.train_x.flatten(1).sum(1).tolist())) > 5 * n  # distinct images, not repeats


def test_labels_per_class_above_the_smallest_class_fails():
    cfg = compose_config(["data=uci_digits", "data.labels_per_class=200"])
    data = instantiate(cfg.data)
    with pytest.raises(ConfigError, match="labels_per_class=200"):
        data.setup()


# ----- conversions --------------------------------------------------------------------------
def test_to_mnist_form_grey_polarity_and_box():
    rgb = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    rgb[0, :, 8:24, 14:18] = 200  # light digit on dark ground
    rgb[1] = 255
    rgb[1, :, 8:24, 14:18] = 20  # dark digit on light ground
    out = to_mnist_form(rgb, box=28, polarity="auto")
    assert out.shape == (2, 1, 28, 28) and out.dtype == torch.uint8
    assert out[:, :, 0].max() < 20 and out[:, :, 14, 14].min() > 150  # both: white ink on black
    small = to_mnist_form(torch.full((1, 1, 16, 16), 255, dtype=torch.uint8), box=20)
    assert small[0, 0, 4:24, 4:24].min() == 255 and small.sum() == 255 * 400  # a 20x20 box in the middle


# ----- IDX datasets (KMNIST, Fashion-MNIST): a YAML with an IDXSource ------------------------
@pytest.mark.parametrize("name,folder", [("kmnist", "KMNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_datasets_read_torchvision_cache(tmp_path, name, folder):
    raw = tmp_path / name / folder / "raw"  # where torchvision's download puts them
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 6)):
        x, y = digit_images(n, seed=n), np.arange(n, dtype=np.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (raw / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    s = load_data(f"{name}_download", tmp_path)
    assert s.train_x.shape == (10, 1, 28, 28) and s.test_x.shape == (6, 1, 28, 28)
    assert torch.equal(s.test_x[:, 0], torch.from_numpy(digit_images(6, seed=6)))
    assert s.test_y.tolist() == [0, 1, 2, 3, 4, 5]


# ----- EMNIST (torchvision's unzipped IDX files, images stored transposed) ------------------
@pytest.mark.parametrize("split,offset,num_classes", [("letters", 1, 26), ("digits", 0, 10)])
def test_emnist_is_transposed_back_and_labels_start_at_zero(tmp_path, split, offset, num_classes):
    raw = tmp_path / "emnist" / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    stored = digit_images(30, seed=1).transpose(0, 2, 1).copy()  # EMNIST's files hold images transposed
    labels = (np.arange(30) % num_classes + offset).astype(np.uint8)
    for part in ("train", "test"):
        (raw / f"emnist-{split}-{part}-images-idx3-ubyte").write_bytes(idx_bytes(stored))
        (raw / f"emnist-{split}-{part}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    s = load_data(f"emnist_{split}_download", tmp_path)
    assert torch.equal(s.test_x[:, 0], torch.from_numpy(digit_images(30, seed=1)))  # bars vertical again
    assert s.test_y.tolist() == (np.arange(30) % num_classes).tolist()


# ----- USPS (bz2 libsvm text, values in [-1, 1], 16x16) -------------------------------------
def test_usps_from_libsvm_bz2(tmp_path):
    root = tmp_path / "usps"
    root.mkdir()
    images = digit_images(8, seed=2, size=16).astype(np.float32) / 255 * 2 - 1  # ink +1, ground -1
    images[1] = -images[1]  # one digit stored dark on light: polarity auto flips it
    for name in ("usps.bz2", "usps.t.bz2"):
        lines = [
            f"{i % 10 + 1} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(img.flatten()))
            for i, img in enumerate(images)
        ]
        (root / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    s = load_data("usps_download", tmp_path)
    assert s.test_x.shape == (8, 1, 28, 28) and s.test_y.tolist() == list(range(8))
    x = s.test_x.float()
    assert x[:, :, :4].max() == 0 and x[:, :, -4:].max() == 0  # 20x20 box, dark margin
    assert (x.flatten(1).mean(1) < 60).all()  # every image white on black, the flipped one too


# ----- SVHN (.mat, RGB 32x32, label 10 for the digit 0) -------------------------------------
def test_svhn_from_mat(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as svhn

    # Generated files cannot match the published md5 that torchvision checks; everything
    # else is torchvision's own reader.
    monkeypatch.setattr(svhn, "check_integrity", lambda path, md5=None: __import__("os").path.isfile(path))
    root = tmp_path / "svhn"
    root.mkdir()
    grey = digit_images(10, seed=3, size=32)
    X = np.repeat(grey[..., None], 3, axis=3).transpose(1, 2, 3, 0)  # (32, 32, 3, N), as in the .mat
    X[..., 1] = 255 - X[..., 1]  # one image dark on light
    y = np.array([[10], [1], [2], [3], [4], [5], [6], [7], [8], [9]], np.uint8)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(root / name, {"X": X, "y": y})
    s = load_data("svhn_download", tmp_path)
    assert s.test_x.shape == (10, 1, 28, 28) and s.test_y.tolist() == list(range(10))
    assert (s.test_x.float().flatten(1).mean(1) < 80).all()  # all white on black after polarity auto
    expected = to_mnist_form(torch.from_numpy(grey).unsqueeze(1))
    assert torch.equal(s.test_x[0], expected[0])


def test_missing_torchvision_dataset_is_a_clear_data_error(tmp_path):
    source = TorchvisionSource("torchvision.datasets.USPS", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match=rf"USPS .* is not in {tmp_path}.*downloading is disabled"):
        source.load()
    with pytest.raises(ConfigError, match="not an importable dataset class"):
        TorchvisionSource("torchvision.datasets.Nope", root=str(tmp_path)).load()


@pytest.mark.parametrize(
    "make,key,name,reason",
    [
        (
            lambda name, root: TorchvisionSource(name, root=root),
            "data.source.dataset",
            "torchvision.datasets.Nope",
            "Nope",
        ),
        (
            lambda name, root: TorchvisionSource(name, root=root),
            "data.source.dataset",
            "os.path",
            "a module, not a class",
        ),
        (lambda name, root: IDXSource(root, download=name), "data.source.download", "nopackage.MNIST", "nopackage"),
    ],
)
def test_a_bad_dataset_import_path_is_one_config_paragraph(tmp_path, caplog, make, key, name, reason):
    with pytest.raises(ConfigError) as e:
        make(name, str(tmp_path)).load()
    message = str(e.value)
    assert message.startswith(f"{key}={name} is not an importable dataset class") and reason in message
    assert "\n" not in message and "e.g. torchvision.datasets.MNIST" in message
    assert not caplog.records  # hydra's get_object logs the failure too: said once, not twice
