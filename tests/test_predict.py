"""predict: MNIST preparation of real-world-like images, numbers, bad files, ONNX inference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lab.data import IDXSource
from mnist_lab.errors import ConfigError
from mnist_lab.inference.imageprep import ink_map, prepare, segment
from mnist_lab.inference.predictor import tta_angles
from mnist_lab.pretrained import weights_path
from mnist_lab.tools.predict import load_predictor, predict, read_files
from mnist_lab.tools.strings_benchmark import render_number, run_benchmark
from tests.conftest import MNIST_DIR, compose_config


@pytest.fixture(scope="module")
def test_digits():
    splits = IDXSource(str(MNIST_DIR)).load()
    return splits.test_x[:, 0].numpy(), splits.test_y.numpy()


@pytest.fixture(scope="module")
def predictor():
    # Fixed weights (the bundled CNN): its readings do not depend on the machine that runs the
    # suite, as a model trained inside the suite's would.
    return load_predictor(weights_path("cnn"))


def render(digit, size, canvas, at, invert, rgb, resample=Image.LANCZOS):
    """An MNIST digit rescaled to size x size, pasted at `at` on a canvas (h, w)."""
    big = np.asarray(Image.fromarray(digit).resize((size, size), resample))
    page = np.zeros(canvas, np.uint8)
    page[at[0] : at[0] + size, at[1] : at[1] + size] = big
    page = 255 - page if invert else page
    return Image.fromarray(page).convert("RGB") if rgb else Image.fromarray(page)


# (digit size, canvas (h, w), paste position, dark ink on light paper, RGB, resampling, file type).
# Pixel-replicated renders: the small test model (96%) is sensitive to the blur of smooth
# upscaling; the fully trained model's agreement on bilinear/Lanczos renders is measured by
# `python -m mnist_lab strings_benchmark`.
VARIANTS = {
    "100px": (100, (100, 100), (0, 0), False, False, Image.NEAREST, "png"),
    "57px_in_80x120_inverted_rgb": (57, (80, 120), (5, 40), True, True, Image.NEAREST, "png"),
    "200px_margins_inverted_bmp": (200, (260, 300), (40, 20), True, False, Image.NEAREST, "bmp"),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow
def test_rendered_digits_are_read_as_the_model_reads_the_originals(variant, test_digits, predictor, tmp_path):
    x, _ = test_digits
    idx = np.random.default_rng(0).choice(len(x), 300, replace=False)
    size, canvas, at, invert, rgb, resample, ext = VARIANTS[variant]
    files = []
    for i in idx:
        files.append(tmp_path / f"{i}.{ext}")
        render(x[i], size, canvas, at, invert, rgb, resample).save(files[-1])
    records = read_files(files, predictor, split=True)
    assert all(r["error"] is None for r in records)
    read = np.array([int(r["text"]) if len(r["text"]) == 1 else -1 for r in records])
    original = predictor(x[idx]).argmax(1)
    agreement = (read == original).mean()
    assert agreement >= 0.99, f"{variant}: {agreement:.1%} of the prepared digits read as their 28x28 originals"


def test_preparation_of_an_mnist_digit_reproduces_it(test_digits):
    x, _ = test_digits
    # An MNIST digit is already prepared: preparing it again moves it by at most a pixel or so.
    diffs = [
        np.abs(prepare(x[i].astype(np.float32) / 255, split=False)[0].image.astype(int) - x[i]).mean()
        for i in range(50)
    ]
    assert np.median(diffs) < 6  # of 255: the same image up to antialiasing and a 1-px shift


def test_number_is_read_as_its_string(test_digits, predictor):
    x, y = test_digits
    # Digits the model reads right on their own, laid out as a row with clear gaps.
    good = np.nonzero(predictor(x[:200]).argmax(1) == y[:200])[0]
    row = [good[i] for i in (0, 1, 2, 3, 4, 5, 6)]
    page = np.concatenate([np.pad(x[i], ((4, 4), (3, 3))) for i in row], 1)
    page = 255 - np.asarray(Image.fromarray(page).resize((page.shape[1] * 2, page.shape[0] * 2), Image.BILINEAR))
    digits = prepare(page.astype(np.float32) / 255)
    assert "".join(str(d) for d in predictor(np.stack([d.image for d in digits])).argmax(1)) == "".join(
        str(y[i]) for i in row
    )


def test_touching_digits_are_cut_and_broken_digits_merged(test_digits):
    x, _ = test_digits
    zero, one = x[3], x[2]  # MNIST test digits 3 and 2 are a 0 and a 1
    # Touching: overlap the two 28x28 boxes until the strokes meet.
    page = np.zeros((28, 70), np.float32)
    page[:, 0:28] = zero / 255
    page[:, 14:42] = np.maximum(page[:, 14:42], x[1] / 255)  # a 2 leaning into the 0
    assert len(segment(ink_map(page))) == 2
    # Broken: a 1 cut by a 3-px gap across its middle stays one digit.
    broken = one.astype(np.float32) / 255
    broken[13:16] = 0
    assert len(prepare(broken)) == 1
    # A dot between two digits (as in an amount) is not a digit.
    row = np.zeros((28, 64), np.float32)
    row[:, :28], row[:, 36:] = zero / 255, one / 255
    row[22:25, 31:34] = 1.0
    assert len(segment(ink_map(row))) == 2


def test_generated_numbers_are_mostly_read_right(test_digits, predictor):
    x, y = test_digits
    import torch

    results = run_benchmark(predictor, torch.from_numpy(x[:, None]), torch.from_numpy(y), num_strings=40, seed=0)
    # Segmentation may cost a few points over reading the same digits one by one.
    assert results["digit_acc"] > results["single_digit_acc_same_digits"] - 0.06
    assert results["count_acc"] >= 0.85
    page, touching = render_number(x[:5], np.random.default_rng(0))
    assert page.dtype == np.uint8 and page.shape[1] > page.shape[0]


@pytest.mark.slow
def test_bad_files_get_their_own_error_and_the_others_are_read(test_digits, trained_run, tmp_path):
    x, _ = test_digits
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    render(x[0], 90, (120, 120), (15, 15), True, True).save(inputs / "a_good.png")
    render(x[1], 60, (60, 60), (0, 0), False, False).save(inputs / "b_good.jpg")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.png").write_text("not an image\n")
    Image.new("L", (64, 64), 230).save(inputs / "blank.png")
    good_bytes = (inputs / "a_good.png").read_bytes()
    (inputs / "truncated.png").write_bytes(good_bytes[: len(good_bytes) // 3])
    out = tmp_path / "out"
    cfg = compose_config(
        [
            f"ckpt_path={trained_run}",
            f"inputs=[{inputs},{tmp_path / 'missing.png'}]",
            "formats=[csv,json]",
            "save_prepared=true",
        ],
        out,
        config_name="predict",
    )
    records = {r["file"].split("/")[-1]: r for r in predict(cfg)}
    assert records["a_good.png"]["error"] is None and len(records["a_good.png"]["text"]) == 1
    assert records["b_good.jpg"]["error"] is None
    expected = {
        "empty.png": "empty",
        "notes.png": "not an image",
        "blank.png": "no ink",
        "truncated.png": "truncated",
        "missing.png": "does not exist",
    }
    for name, words in expected.items():
        assert words in records[name]["error"], (name, records[name]["error"])
    saved = json.loads((out / "predictions.json").read_text())
    assert len(saved) == 7 and (out / "predictions.csv").read_text().count("\n") == 8
    prepared = saved[0]["digits"][0]["prepared"]
    assert np.asarray(Image.open(prepared)).shape == (28, 28)
    # The command line: same results, exit status 2 because some files failed.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lab",
            "predict",
            f"ckpt_path={trained_run}",
            f"inputs={inputs}",
            f"hydra.run.dir={tmp_path}/cli",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "a_good.png: " in result.stdout and "blank.png: ERROR" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_checkpoints_give_one_paragraph(trained_run, tmp_path):
    import torch

    from mnist_lab.checkpoints import load_net
    from mnist_lab.errors import CheckpointError

    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.0.weight": torch.zeros(2)}, "epoch": 1}, foreign)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    cases = {
        foreign: "another project",
        truncated: "truncated or corrupted",
        text: "not a PyTorch checkpoint",
        empty: "empty",
        tmp_path / "nope.ckpt": "does not exist",
        tmp_path: "directory without",
    }
    for path, words in cases.items():
        with pytest.raises(CheckpointError, match=words):
            load_net(path)
    # A checkpoint copied out of its run still rebuilds from the config it carries.
    copied = tmp_path / "copied.ckpt"
    copied.write_bytes(ckpt.read_bytes())
    net, cfg = load_net(copied)
    assert cfg.model._target_ == "mnist_lab.models.CNN"
    # On the command line: one paragraph, exit status 1, no traceback.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lab",
            "predict",
            f"ckpt_path={truncated}",
            f"inputs={tmp_path}",
            f"hydra.run.dir={tmp_path}/o",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "truncated or corrupted" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_test_time_augmentation_averages_the_rotated_views(test_digits, predictor):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    digits, labels = test_digits[0][:1000], test_digits[1][:1000]
    tta = load_predictor(weights_path("cnn"), tta_degrees=[-8, 8])
    assert tta.tta_degrees == (-8.0, 8.0) and predictor.tta_degrees == ()
    # Each view is the digit rotated as the training augmentation resamples it, on [0, 1] pixels.
    x = torch.from_numpy(digits)[:, None].float() / 255
    views = [x] + [rotate(x, a, interpolation=InterpolationMode.BILINEAR) for a in (-8, 8)]
    by_hand = torch.stack([predictor.logits((v - tta.mean) / tta.std).softmax(1) for v in views]).mean(0)
    assert np.allclose(tta(digits), by_hand.numpy(), atol=1e-5)
    assert not np.allclose(tta(digits), predictor(digits), atol=1e-3)  # the views change the outputs
    # Views closed under quarter turns: a digit and its quarter turn are read alike.
    quarter = load_predictor(weights_path("cnn"), tta_degrees=[90, 180, -90])
    turned = np.ascontiguousarray(np.rot90(digits, 1, axes=(1, 2)))
    assert np.allclose(quarter(digits), quarter(turned), atol=1e-4)
    # The bundled weights are fixed, so this holds on every machine: small rotations of the
    # augmentation's range keep the readings (not a claim that they improve them).
    assert (tta(digits).argmax(1) == labels).mean() >= (predictor(digits).argmax(1) == labels).mean() - 0.005


@pytest.mark.parametrize("value", [[0], ["eight"], [200], [True], [float("nan")], "x"])
def test_bad_test_time_augmentation_angles_are_named(value):
    with pytest.raises(ConfigError, match=r"tta_degrees=.*e\.g\. tta_degrees=\[-8,8\]"):
        tta_angles(value)
    assert tta_angles(8) == (8.0,) and tta_angles([]) == tta_angles(None) == ()
