"""The IDX reader on the real files, its errors on bad ones, splits, subsets, augmentation."""

from __future__ import annotations

import gzip
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from mnist_lab.data import DigitsDataModule, IDXSource, RandomAffine, RandomElastic, Splits, TensorBatches
from mnist_lab.errors import ConfigError, DataError
from tests.conftest import MNIST_DIR

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    return IDXSource(str(MNIST_DIR)).load()


def test_real_mnist_counts_and_statistics(mnist):
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(mnist.train_y).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.test_y).tolist() == TEST_COUNTS
    pixels = mnist.train_x.float() / 255
    assert round(pixels.mean().item(), 4) == 0.1307
    assert round(pixels.std().item(), 4) == 0.3081


@pytest.fixture
def mnist_copy(tmp_path):
    root = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, root)
    return root


def test_truncated_file_is_named(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*truncated"):
        IDXSource(str(mnist_copy)).load()


def test_wrong_magic_is_named(mnist_copy):
    path = mnist_copy / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0:4] = b"GIF8"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is not an IDX file"):
        IDXSource(str(mnist_copy)).load()


def test_swapped_image_and_label_files(mnist_copy):
    images, labels = mnist_copy / "t10k-images-idx3-ubyte.gz", mnist_copy / "t10k-labels-idx1-ubyte.gz"
    tmp = mnist_copy / "tmp.gz"
    images.rename(tmp)
    labels.rename(images)
    tmp.rename(labels)
    with pytest.raises(DataError, match=r"rank-1 IDX array where a rank-3 one was expected"):
        IDXSource(str(mnist_copy)).load()


def test_mismatched_counts(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[4:8] = (9000).to_bytes(4, "big")
    path.write_bytes(gzip.compress(bytes(raw[: 8 + 9000])))
    with pytest.raises(DataError, match=r"10000 images but .* 9000 labels"):
        IDXSource(str(mnist_copy)).load()


def test_corrupt_gzip_is_named(mnist_copy):
    (mnist_copy / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"Cannot read the IDX file .*train-images-idx3-ubyte.gz"):
        IDXSource(str(mnist_copy)).load()


def test_raw_uncompressed_files_are_read(tmp_path):
    for path in MNIST_DIR.glob("*.gz"):
        (tmp_path / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    splits = IDXSource(str(tmp_path)).load()
    assert torch.bincount(splits.test_y).tolist() == TEST_COUNTS


def test_missing_directory_tries_the_downloader_then_says_where(tmp_path, monkeypatch):
    """Offline: the torchvision downloader fails, the error names the folder and the fix."""
    calls = []

    def offline(self, cls):
        calls.append(self.download)
        raise OSError("network unreachable")

    monkeypatch.setattr(IDXSource, "_download", offline)
    source = IDXSource(str(tmp_path / "nowhere"), download="torchvision.datasets.MNIST")
    with pytest.raises(DataError) as err:
        source.load()
    assert calls == ["torchvision.datasets.MNIST"]
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "network unreachable" in message
    assert "train-images-idx3-ubyte" in message and "data.source.root" in message


def test_missing_directory_without_downloader(tmp_path):
    with pytest.raises(DataError, match="downloading is disabled"):
        IDXSource(str(tmp_path)).load()


def test_downloader_output_is_found(tmp_path, monkeypatch):
    """Files that torchvision's downloader left in <root>/MNIST/raw are used."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in MNIST_DIR.glob("*.gz"):
        (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    source = IDXSource(str(tmp_path), download="torchvision.datasets.MNIST")
    monkeypatch.setattr(IDXSource, "_download", lambda self, cls: pytest.fail("cached files must be used"))
    assert len(source.load().test_y) == 10000


def test_split_is_seeded_and_disjoint():
    a = DigitsDataModule(IDXSource(str(MNIST_DIR)), split_seed=0)
    a.setup()
    assert len(a.splits.train_y) == 55000 and len(a.splits.val_y) == 5000 and len(a.splits.test_y) == 10000
    b = DigitsDataModule(IDXSource(str(MNIST_DIR)), split_seed=0)
    b.setup()
    assert torch.equal(a.splits.val_x, b.splits.val_x)
    c = DigitsDataModule(IDXSource(str(MNIST_DIR)), split_seed=1)
    c.setup()
    assert not torch.equal(a.splits.val_y, c.splits.val_y)
    # No validation image is a training image: compare by content hash.
    train_keys = set(map(bytes, a.splits.train_x.flatten(1)[:, 200:600].numpy()))
    overlap = sum(bytes(v) in train_keys for v in a.splits.val_x.flatten(1)[:, 200:600].numpy())
    assert overlap < 10  # MNIST has a handful of near-duplicate digits, not thousands


@pytest.mark.parametrize("per_class", [1, 10, 50])
def test_labels_per_class_gives_exactly_n(per_class):
    dm = DigitsDataModule(IDXSource(str(MNIST_DIR)), labels_per_class=per_class)
    dm.setup()
    assert torch.bincount(dm.splits.train_y, minlength=10).tolist() == [per_class] * 10


def test_labels_per_class_too_large():
    dm = DigitsDataModule(IDXSource(str(MNIST_DIR)), labels_per_class=6000)
    with pytest.raises(ConfigError, match=r"labels_per_class=6000.*as few as"):
        dm.setup()


def test_normalize_matches_torchvision():
    from torchvision.transforms import v2

    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    dm = DigitsDataModule(IDXSource(str(MNIST_DIR)))
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.1307], [0.3081])])(x)
    assert torch.allclose(dm.normalize(x), reference, atol=1e-6)


def test_batches_cover_each_sample_once_and_resume_mid_epoch():
    x, y = torch.arange(10).view(10, 1, 1, 1), torch.arange(10)
    batches = TensorBatches(x, y, batch_size=3, shuffle=True, seed=7)
    first = [b[1].tolist() for b in batches]
    assert sorted(sum(first, [])) == list(range(10)) and len(first) == len(batches) == 4
    second = [b[1].tolist() for b in batches]
    assert second != first  # a new order each epoch
    # Stop after 2 batches of the third epoch, restore in a new object: the rest follows.
    uninterrupted = [b[1].tolist() for b in batches]
    batches.epoch -= 1
    it = iter(batches)
    next(it), next(it)
    state = batches.state_dict()
    resumed = TensorBatches(x, y, batch_size=3, shuffle=True, seed=7)
    resumed.load_state_dict(state)
    assert [b[1].tolist() for b in resumed] == uninterrupted[2:]


class _Numbered:
    """A source of 200 images whose pixels hold their index, so a batch tells which images it took."""

    def load(self) -> Splits:
        x = torch.arange(200).view(200, 1, 1, 1).expand(200, 1, 28, 28).to(torch.uint8)
        y = torch.arange(200) % 10
        return Splits(x.clone(), y, x[:20].clone(), y[:20])


def _order_and_split(**seeds: int) -> tuple[list[int], list[int], list[int]]:
    dm = DigitsDataModule(_Numbered(), batch_size=8, val_size=40, labels_per_class=8, **seeds)
    dm.setup()
    epochs = dm.train_dataloader()
    order = [int(v) for _ in range(2) for x, _ in epochs for v in x[:, 0, 0, 0]]  # two epochs
    return order, dm.splits.val_x[:, 0, 0, 0].tolist(), dm.splits.train_x[:, 0, 0, 0].tolist()


def test_seed_draws_the_training_order_and_split_seed_the_split():
    order, val, labelled = _order_and_split(split_seed=0, seed=0)
    assert sorted(order[:80]) == sorted(labelled)  # an epoch is the labelled subset, each once
    assert _order_and_split(split_seed=0) == (order, val, labelled)  # seed=None: split_seed's order
    other_seed = _order_and_split(split_seed=0, seed=1)
    assert other_seed[0] != order and other_seed[1:] == (val, labelled)
    other_split = _order_and_split(split_seed=1, seed=0)
    assert other_split[1] != val and other_split[2] != labelled
    # The same order of positions: which images fill them is the split's business.
    positions = {v: i for i, v in enumerate(labelled)}
    assert [positions[v] for v in order] == [dict(zip(other_split[2], range(80)))[v] for v in other_split[0]]


def test_fine_tuning_seeds_are_replicates_on_one_split(tmp_path):
    """`mnist-lab model=cnn finetune=freeze_conv data=semeion seed=N` at tiny settings: no
    dropout, no augmentation, the bundled weights; only the epoch order differs between seeds."""
    from mnist_lab.train import train
    from tests.conftest import compose_config

    def run(seed: int, name: str) -> tuple[dict, torch.Tensor]:
        overrides = ["model=cnn", "finetune=freeze_conv", "data=semeion", f"seed={seed}", "logger=none"]
        overrides += [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=6",
            "trainer.accelerator=cpu",
            "callbacks.progress_bar=null",
        ]
        overrides += ["callbacks.test_report=null", "trainer.enable_model_summary=false"]
        metrics = train(compose_config(overrides, tmp_path / name))
        last = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        return metrics, last["state_dict"]["net.head.weight"]

    (m0, w0), (m1, w1), (again, w_again) = run(0, "a"), run(1, "b"), run(0, "c")
    assert not torch.equal(w0, w1) and m0["test/loss"] != m1["test/loss"]
    assert torch.equal(w0, w_again) and m0["test/loss"] == again["test/loss"]


def _on(device: str) -> SimpleNamespace:
    """The parts of a Trainer the datamodule reads: its device and DDP place."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), global_rank=0, world_size=1)


def test_on_device_serves_every_batch_from_one_copy_on_the_device():
    # The meta device stands in for a GPU: tensors there have shapes and devices, no data.
    dm = DigitsDataModule(IDXSource(str(MNIST_DIR)), on_device=True, train_size=640)
    dm.setup()
    dm.trainer = _on("meta")
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 and all(x.device.type == y.device.type == "meta" for x, y in batches)
    assert batches[0][0].shape == (64, 1, 28, 28) and batches[0][0].dtype == torch.uint8
    assert dm.val_dataloader().x is dm.val_dataloader().x  # copied once, not per epoch
    assert next(iter(dm.test_dataloader()))[0].device.type == "meta"
    assert dm.splits.train_x.device.type == "cpu"  # the host copy stays as loaded


def test_on_device_gives_the_same_batches_as_host_batches():
    host, placed = (
        DigitsDataModule(IDXSource(str(MNIST_DIR)), on_device=flag, train_size=640) for flag in (False, True)
    )
    for dm in (host, placed):
        dm.setup()
        dm.trainer = _on("cpu")
    for _ in range(2):  # two epochs: two shuffled orders
        for (hx, hy), (px, py) in zip(host.train_dataloader(), placed.train_dataloader(), strict=True):
            assert torch.equal(hx, px) and torch.equal(hy, py)


def test_random_affine_is_per_sample_and_keeps_shape():
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    out = RandomAffine(degrees=30, translate=0.1, scale=(0.8, 1.2))(x)
    assert out.shape == x.shape
    assert len({tuple(o.flatten().round(decimals=3).tolist()) for o in out}) == 16  # all different
    assert torch.equal(RandomAffine()(x), x) or torch.allclose(RandomAffine()(x), x, atol=1e-6)


def test_random_elastic_bends_each_image_by_a_few_pixels():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0
    elastic = RandomElastic(alpha=34, sigma=4)
    identity = RandomAffine().grid(x)
    shift = (elastic.grid(x) - identity) * 14  # grid units -> pixels (28 pixels span 2)
    # Uniform [-1, 1] noise (std 0.58) smoothed by a sigma-4 Gaussian keeps about 1/sqrt(4 pi 16)
    # of its std; times alpha=34: about 1.4 pixels. A units slip (x14 or /14) falls far outside.
    assert 0.7 < shift.std().item() < 2.5
    # smooth: neighbouring pixels move almost alike, unlike the raw noise
    assert (shift[:, 1:] - shift[:, :-1]).abs().mean() < 0.2 * shift.abs().mean()
    out = elastic(x)
    assert out.shape == x.shape and not torch.equal(out[0], out[1])  # one field per image
    # Bent, not erased: a field stretches some strokes and squeezes others (the ink of one image
    # moves by up to about 1.7x either way here), but on average it keeps the ink.
    ink = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert 0.85 < ink.mean().item() < 1.15 and ink.min().item() > 0.3


@pytest.mark.parametrize("sigma", [0.8, 4.0, 20.0])
def test_smooth_is_torchvisions_gaussian_blur(sigma):
    from torchvision.transforms.v2.functional import gaussian_blur

    from mnist_lab.data.augment import smooth

    x = torch.rand(3, 2, 28, 28)
    radius = min(math.ceil(3 * sigma), 27)
    expected = gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])
    torch.testing.assert_close(smooth(x, sigma), expected, atol=1e-5, rtol=1e-5)


def test_random_elastic_without_alpha_is_the_affine_part():
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    affine = RandomAffine(degrees=10, translate=0.1)(x)
    torch.manual_seed(1)
    assert torch.equal(RandomElastic(alpha=0, degrees=10, translate=0.1)(x), affine)


@pytest.mark.parametrize("kwargs", [{"alpha": -1.0}, {"sigma": 0.0}])
def test_random_elastic_bad_values(kwargs):
    with pytest.raises(ConfigError, match="alpha .* must be >= 0 and sigma"):
        RandomElastic(**kwargs)


def test_random_affine_bad_values():
    with pytest.raises(ConfigError, match="degrees must be >= 0"):
        RandomAffine(degrees=-5)
