"""`python -m mnist_lab strings_benchmark ckpt_path=PATH`: read generated numbers of 3-8 MNIST digits.

Each string is a row of MNIST test digits drawn on a page with random size, spacing (some
touching), small rotation, vertical jitter, paper and ink levels, noise and either polarity,
then read by `predict` (segmentation + classification). Reports string accuracy, digit
accuracy (1 - edit distance / length) and the model's accuracy on the same digits as plain
28x28 images, to results.json and the terminal, with a figure of examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from scipy import ndimage

from mnist_lab import CONF_DIR
from mnist_lab.errors import ConfigError, user_errors
from mnist_lab.files import write_json
from mnist_lab.inference.imageprep import ImageError, prepare


def render_number(digits: np.ndarray, rng: np.random.Generator, max_degrees: float = 10.0) -> tuple[np.ndarray, bool]:
    """Draw MNIST digits in a row on a page; return the page (H, W) uint8 and whether two digits touch.

    Args:
        digits: (k, 28, 28) uint8 MNIST digits, white on black.
        rng: the random source (sizes, spacing, rotation, levels, noise, polarity).
        max_degrees: rotation drawn uniformly from [-max_degrees, max_degrees] per digit.
    """
    scale = rng.uniform(1.0, 3.0)  # a 20 px MNIST digit becomes 20-60 px high
    height = 20 * scale
    inks = []
    for d in digits:
        img = Image.fromarray(d.astype(np.float32) / 255, mode="F")
        s = scale * rng.uniform(0.9, 1.1)
        img = img.resize((round(28 * s), round(28 * s)), Image.Resampling.BILINEAR)
        img = img.rotate(rng.uniform(-max_degrees, max_degrees), Image.Resampling.BILINEAR, expand=True)
        a = np.clip(np.asarray(img), 0, 1)
        rows, cols = np.nonzero(a > 0.02)
        inks.append(a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    # Gaps between ink boxes from -0.05 to 0.4 digit heights: negative ones may make strokes touch.
    gaps = rng.uniform(-0.05, 0.4, len(inks) - 1) * height
    margin = rng.uniform(0.2, 1.0, 4) * height
    xs = [margin[0]]
    for ink, gap in zip(inks[:-1], gaps):
        xs.append(xs[-1] + ink.shape[1] + gap)
    width = int(xs[-1] + inks[-1].shape[1] + margin[1]) + 1
    tall = max(i.shape[0] for i in inks)
    page_h = int(tall + 0.2 * height + margin[2] + margin[3]) + 1
    alpha = np.zeros((page_h, width), np.float32)
    strokes = []  # each digit's strokes (ink > 0.3) on the page
    for ink, x in zip(inks, xs):
        y = int(margin[2] + (tall - ink.shape[0]) / 2 + rng.uniform(-0.1, 0.1) * height)
        region = (slice(y, y + ink.shape[0]), slice(int(x), int(x) + ink.shape[1]))
        alpha[region] = np.maximum(alpha[region], ink)
        strokes.append(np.zeros_like(alpha, bool))
        strokes[-1][region] = ink > 0.3
    # Touching: a digit's strokes meet or cross its neighbour's (8-neighbourhood).
    touching = any((ndimage.binary_dilation(a, np.ones((3, 3))) & b).any() for a, b in zip(strokes, strokes[1:]))
    dark_on_light = rng.random() < 0.5
    if dark_on_light:
        paper, ink_level = rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.3)
    else:
        paper, ink_level = rng.uniform(0.0, 0.25), rng.uniform(0.7, 1.0)
    page = paper + (ink_level - paper) * alpha + rng.normal(0, rng.uniform(0, 0.04), alpha.shape)
    return (np.clip(page, 0, 1) * 255).round().astype(np.uint8), touching


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning a into b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def run_benchmark(predictor, images: torch.Tensor, labels: torch.Tensor, num_strings: int, seed: int) -> dict[str, Any]:
    """Generate `num_strings` numbers from (images, labels), read them, and score the reading.

    Args:
        predictor: uint8 (N, 28, 28) -> probabilities (N, K), e.g. mnist_lab.inference.predictor.Predictor.
        images: (N, 1, 28, 28) uint8 digits to draw from; labels: (N,) their labels.
        num_strings: how many numbers; lengths drawn uniformly from 3 to 8.
        seed: seeds the digits, the layout and the rendering.
    """
    rng = np.random.default_rng(seed)
    pool = images[:, 0].numpy()
    truths, pages, picks, touching = [], [], [], []
    for _ in range(num_strings):
        idx = rng.choice(len(pool), rng.integers(3, 9), replace=False)
        page, touch = render_number(pool[idx], rng)
        truths.append("".join(str(int(labels[i])) for i in idx))
        pages.append(page)
        picks.append(idx)
        touching.append(touch)
    # Read every page: segmentation + MNIST preparation, then one batched pass of the model.
    prepared, counts = [], []
    for page in pages:
        try:
            digits = prepare(page.astype(np.float32) / 255)
        except ImageError:
            digits = []
        prepared += [d.image for d in digits]
        counts.append(len(digits))
    probs = predictor(np.stack(prepared))
    reads = np.argmax(probs, 1)
    texts, start = [], 0
    for c in counts:
        texts.append("".join(str(int(k)) for k in reads[start : start + c]))
        start += c
    single: np.ndarray = predictor(pool[np.concatenate(picks)]).argmax(1) == labels[np.concatenate(picks)].numpy()
    total = sum(len(t) for t in truths)
    edits = [edit_distance(p, t) for p, t in zip(texts, truths)]
    lengths = np.array([len(t) for t in truths])
    exact = np.array([p == t for p, t in zip(texts, truths)])
    touched = np.array(touching)
    return {
        "num_strings": num_strings,
        "num_digits": total,
        "seed": seed,
        "string_acc": float(exact.mean()),
        "digit_acc": 1 - sum(edits) / total,
        "count_acc": float(np.mean([len(p) == len(t) for p, t in zip(texts, truths)])),
        "single_digit_acc_same_digits": float(single.mean()),
        "string_acc_by_length": {int(n): float(exact[lengths == n].mean()) for n in np.unique(lengths)},
        "touching_share": float(touched.mean()),
        "string_acc_touching": float(exact[touched].mean()) if touched.any() else None,
        "string_acc_not_touching": float(exact[~touched].mean()) if (~touched).any() else None,
        "examples": [{"truth": t, "read": p} for t, p in zip(truths[:50], texts[:50])],
        "_pages": pages,
    }


def examples_figure(pages: list[np.ndarray], examples: list[dict[str, str]], n: int = 12):
    """The first `n` generated pages, each titled with its truth and what was read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n // 2, 2, figsize=(10, 1.3 * n // 2))
    for ax, page, ex in zip(axes.flat, pages, examples):
        ax.imshow(page, cmap="gray", vmin=0, vmax=255)
        ok = "ok" if ex["read"] == ex["truth"] else "WRONG"
        ax.set_title(f"truth {ex['truth']}  read {ex['read']}  {ok}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def render_agreement(predictor, images: torch.Tensor, num: int, seed: int) -> dict[str, float]:
    """Share of single digits, re-rendered larger, that are read as the model reads the 28x28 originals.

    Each digit is upscaled with a resampling filter, inverted (dark on light) and prepared again.

    Args:
        predictor: uint8 (N, 28, 28) -> probabilities (N, K).
        images: (N, 1, 28, 28) uint8 digits; num of them are drawn with seed.
    """
    x = images[:, 0].numpy()[np.random.default_rng(seed).choice(len(images), num, replace=False)]
    original = predictor(x).argmax(1)
    out = {}
    for name, size, resample in (
        ("bilinear_100px", 100, Image.Resampling.BILINEAR),
        ("lanczos_57px", 57, Image.Resampling.LANCZOS),
        ("nearest_100px", 100, Image.Resampling.NEAREST),
    ):
        pages = [255 - np.asarray(Image.fromarray(d).resize((size, size), resample)) for d in x]
        prepared = np.stack([prepare(p.astype(np.float32) / 255)[0].image for p in pages])
        out[name] = float((predictor(prepared).argmax(1) == original).mean())
    return out


def strings_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark of cfg on the model of cfg.ckpt_path; print and write results.json."""
    from mnist_lab.checkpoints import run_config
    from mnist_lab.tools.predict import load_predictor
    from mnist_lab.weights import find_checkpoint

    if cfg.num_strings < 1:
        raise ConfigError(f"num_strings={cfg.num_strings}: generate at least one string.")
    predictor = load_predictor(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else run_config(find_checkpoint(cfg.ckpt_path)).data
    datamodule = instantiate(data_cfg)
    datamodule.setup("test")
    test_x, test_y = datamodule.splits.test_x, datamodule.splits.test_y
    test_acc = float((predictor(test_x[:, 0].numpy()).argmax(1) == test_y.numpy()).mean())
    results = run_benchmark(predictor, test_x, test_y, cfg.num_strings, cfg.seed)
    pages = results.pop("_pages")
    results.update(checkpoint=str(cfg.ckpt_path), single_digit_test_acc=test_acc)
    results["rendered_single_digit_agreement"] = render_agreement(predictor, test_x, 1000, cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    write_json(output_dir / "results.json", results)
    fig = examples_figure(pages, results["examples"])
    fig.savefig(output_dir / "examples.png", dpi=100)
    print(
        f"{results['num_strings']} strings, {results['num_digits']} digits (seed {cfg.seed}): "
        f"string accuracy {results['string_acc']:.2%}, digit accuracy {results['digit_acc']:.2%}, "
        f"right digit count {results['count_acc']:.2%}; the model on the same digits as 28x28 images "
        f"{results['single_digit_acc_same_digits']:.2%}, on the whole test set {test_acc:.2%}. "
        f"Strings with touching digits: {results['touching_share']:.1%}. Single test digits re-rendered larger "
        f"and inverted, read as their 28x28 originals: {results['rendered_single_digit_agreement']}. "
        f"Results in {output_dir}"
    )
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="strings_benchmark")
def main(cfg: DictConfig) -> None:
    with user_errors():
        strings_benchmark(cfg)


if __name__ == "__main__":
    main()
