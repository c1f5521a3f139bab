"""MNIST's form has one home (mnist_lab.data.mnist_form.fit_to_box): the bundled targets and predict/serve
give the network the same tensor for the same digit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from mnist_lab import ROOT_DIR
from mnist_lab.data import SemeionSource, UCIDigitsSource, USPSTextSource, to_mnist_form
from mnist_lab.data.mnist_form import fit_to_box
from mnist_lab.inference.imageprep import ink_map, read_grey
from mnist_lab.inference.predictor import Predictor
from mnist_lab.tools.predict import read_files
from tests.conftest import compose_config

SOURCES = {
    "semeion": lambda: SemeionSource(str(ROOT_DIR / "data" / "semeion" / "semeion.data.gz")),
    "usps_test": lambda: USPSTextSource(str(ROOT_DIR / "data" / "usps_test" / "zip.test.gz")),
    "uci_digits": UCIDigitsSource,
}


class Capture:
    """A model that keeps the batches it is given: what the network would see."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return torch.zeros(len(x), 10)


def as_files(images: torch.Tensor, folder, invert: bool) -> list:
    """Each (1, H, W) [0, 1] image as an 8-bit PNG inside a 4-pixel margin of paper, as a scan has."""
    paths = []
    for i, image in enumerate(images):
        grey = np.pad((image[0].numpy() * 255).round().astype(np.uint8), 4)
        path = folder / f"{i:03d}.png"
        Image.fromarray(255 - grey if invert else grey).save(path)
        paths.append(path)
    return paths


def network_inputs(name: str, images: torch.Tensor, folder, invert: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What the network gets for these raw images: (through the bundled target, through predict's files)."""
    data = instantiate(compose_config([f"data={name}"]).data)
    prepared = to_mnist_form(images, box=data.source.box, center=True)  # HeldOutTestSource.load's preparation
    from_dataset = data.normalize(prepared)  # on_after_batch_transfer
    capture = Capture()
    records = read_files(as_files(images, folder, invert), Predictor(capture, data.mean, data.std), split=False)
    assert all(r["error"] is None for r in records)
    return from_dataset, torch.cat(capture.inputs)


@pytest.mark.parametrize("invert", [False, True], ids=["white_on_black", "black_on_white"])
def test_a_dataset_digit_saved_as_png_reaches_the_network_as_the_same_tensor(tmp_path, invert):
    # Semeion's digits are binary, so the PNG holds exactly the dataset's values: tolerance 0
    # (measured: all 1,593 digits, either polarity, equal bit for bit).
    images, _ = SOURCES["semeion"]().images()
    from_dataset, from_files = network_inputs("semeion", images[::40], tmp_path, invert)  # 40 digits
    assert from_files.shape == from_dataset.shape == (40, 1, 28, 28)
    assert torch.equal(from_files, from_dataset)


def test_grey_digits_differ_only_by_the_files_background_removal(tmp_path):
    """A grey scan also has its faint ink (under 0.2 of the contrast) removed and its levels
    stretched by imageprep.ink_map, which only image files need; the rest is the same arithmetic."""
    images, _ = SOURCES["usps_test"]().images()
    images = images[::20]  # 101 digits
    from_dataset, from_files = network_inputs("usps_test", images, tmp_path, invert=False)
    inks = [ink_map(read_grey(path)) for path in sorted(tmp_path.glob("*.png"))]
    expected = torch.cat([fit_to_box(torch.from_numpy(ink)[None, None]) for ink in inks])
    assert torch.equal(from_files, (expected.float() / 255 - 0.1307) / 0.3081)
    # Measured: 4.1 of 255 grey levels on average over every 5th USPS digit, either polarity.
    assert (from_files - from_dataset).abs().mean() * 0.3081 * 255 < 8


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_batch_is_prepared_as_its_images_one_by_one(name):
    images, _ = SOURCES[name]().images()
    images = images[:300]
    batch = fit_to_box(images)
    assert torch.equal(batch, torch.cat([fit_to_box(image[None]) for image in images]))
    assert (batch.flatten(1).amax(1) == 255).all()  # every digit's strongest stroke at 255


def test_the_digit_is_fitted_keeping_its_aspect_and_centred_by_mass():
    ink = torch.zeros(1, 1, 40, 40)
    ink[0, 0, 5:35, 10:20] = 1.0  # a 30 x 10 bar: 20 x 7 (6.67 rounded) in MNIST's box
    out = fit_to_box(ink)[0, 0]
    rows, cols = out.nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (20, 7)
    assert (rows.min(), cols.min()) == (4, 11)  # mass centre 9.5 + 4 = 13.5 rounds the shift to 4; 3 + 11 = 14
    assert torch.equal(fit_to_box(torch.zeros(2, 1, 16, 16)), torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
