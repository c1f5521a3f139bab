"""Arbitrary images of handwriting -> MNIST-style 28x28 digits, one per digit of a number.

A model trained on MNIST sees only digits in MNIST's form (white ink on black, scaled into a
20x20 box keeping the aspect ratio, centred by mass in 28x28). An image file gets what only
image files need here: grey, polarity detected from the background, background removed, and a
number (a postal code, an amount) cut into digits (connected ink components, fragments of one
digit merged, touching digits split); then each digit goes through the same preparation as
the datasets' images, `mnist_lab.data.mnist_form.fit_to_box`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_lab.data.mnist_form import fit_to_box
from mnist_lab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Ink below this fraction of the image's ink contrast is paper texture, noise or JPEG ringing.
NOISE_FLOOR = 0.2
# Ink components under 2% of the largest one's area are dust or noise specks, not writing.
SPECK = 0.02
# A group of ink wider than this x the digits' median height holds several digits. Tuned on
# 300 generated strings of MNIST *training* digits (the benchmark uses test digits): 1.2 / 1.3 /
# 1.45 left 9 / 5 / 7 strings with a wrong digit count.
SPLIT_RATIO = 1.3
# Less contrast than this (on a 0..1 grey scale) between paper and ink: there is no writing.
MIN_CONTRAST = 0.15


class ImageError(UserError):
    """An input image that cannot be read or holds no digit."""


@dataclass
class Digit:
    """One digit cut out of an image: its MNIST-style 28x28 uint8 image and (x0, y0, x1, y1) box."""

    image: np.ndarray
    box: tuple[int, int, int, int]


def read_grey(path: str | Path) -> np.ndarray:
    """An image file as (H, W) float32 grey levels in [0, 1]; transparency is composited onto white.

    Args:
        path: any format Pillow reads (PNG, JPEG, BMP, GIF, TIFF, WebP).
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes): nothing to read. Save the image again.")
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)  # phone photos store their rotation in EXIF
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{path} is not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, WebP): {e}. Skip or convert it."
        ) from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # damaged data in a known format
        raise ImageError(f"{path} cannot be decoded ({e}): the file is damaged or truncated. Save it again.") from e
    if grey.size == 0:
        raise ImageError(f"{path} has no pixels ({grey.shape}). Save the image again.")
    return grey


def ink_map(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey levels -> ink in [0, 1] on a 0 background (MNIST's white on black), either polarity.

    The paper is the image's border colour (its median); ink is what departs from it, on the
    side where the image reaches furthest, so dark-on-light, light-on-dark and grey paper all work.

    Args:
        grey: (H, W) grey levels in [0, 1].
        name: the file, named in errors.
    """
    h, w = grey.shape
    m = max(1, min(h, w) // 50)  # a border 2% wide: paper in any sensible photo or scan
    border = np.concatenate([grey[:m].ravel(), grey[-m:].ravel(), grey[:, :m].ravel(), grey[:, -m:].ravel()])
    paper = float(np.median(border))
    # Strongest departure from the paper on each side, averaged over 3x3 so that a lone hot
    # pixel (dust, sensor noise) counts for 1/9 and a pen stroke (>= 3 px wide) fully.
    dark, light = (float(ndimage.uniform_filter(d, 3).max()) for d in (paper - grey, grey - paper))
    ink = paper - grey if dark > light else grey - paper
    contrast = max(dark, light)
    if contrast < MIN_CONTRAST:
        raise ImageError(
            f"{name} holds no ink: its grey levels stay within {contrast:.2f} of the paper's {paper:.2f} "
            f"(less than {MIN_CONTRAST}). Is it blank, or is the writing too faint? Rescan with more contrast."
        )
    # Levels stretched so that the strongest stroke reaches 1 (MNIST strokes saturate at 255).
    ink = np.clip(ink / contrast, 0, 1)
    ink[ink < NOISE_FLOOR] = 0
    return ink


def to_mnist(ink: np.ndarray) -> np.ndarray:
    """One digit's ink (H, W) in [0, 1], 0 background -> (28, 28) uint8 in MNIST's form (fit_to_box)."""
    return fit_to_box(torch.from_numpy(np.ascontiguousarray(ink))[None, None])[0, 0].numpy()


@dataclass
class _Group:
    """Connected components read as one digit: their labels and joint box (y0, y1, x0, x1)."""

    labels: set[int]
    y0: int
    y1: int
    x0: int
    x1: int

    def gap(self, other: _Group) -> int:  # horizontal gap between the boxes (negative: they overlap)
        return max(self.x0, other.x0) - min(self.x1, other.x1)

    def absorb(self, other: _Group) -> None:
        self.labels |= other.labels
        self.y0, self.y1 = min(self.y0, other.y0), max(self.y1, other.y1)
        self.x0, self.x1 = min(self.x0, other.x0), max(self.x1, other.x1)


def _merge_fragments(groups: list[_Group], height: float) -> list[_Group]:
    """Merge the pieces of broken digits; drop small marks far from any digit (a dot, a comma)."""
    groups = sorted(groups, key=lambda g: g.x0 + g.x1)
    while len(groups) > 1:
        # A piece under half a digit's height is part of the nearest digit if it is close to it.
        short = [g for g in groups if g.y1 - g.y0 < 0.5 * height]
        if short:
            frag = min(short, key=lambda g: g.y1 - g.y0)
            i = groups.index(frag)
            near = min((groups[j] for j in (i - 1, i + 1) if 0 <= j < len(groups)), key=frag.gap)
            groups.remove(frag)
            if frag.gap(near) <= 0.15 * height:
                near.absorb(frag)
            continue
        # Two pieces one above the other (sharing most of their columns, few of their rows): a
        # digit broken across (the bar of a 5). Neighbours in a row share rows, so a 7's bar
        # reaching over a 1 does not merge them.
        pair = next(
            (
                (a, b)
                for a, b in zip(groups, groups[1:])
                if -a.gap(b) > 0.5 * min(a.x1 - a.x0, b.x1 - b.x0)
                and min(a.y1, b.y1) - max(a.y0, b.y0) < 0.5 * min(a.y1 - a.y0, b.y1 - b.y0)
            ),
            None,
        )
        if pair is None:
            break
        pair[0].absorb(pair[1])
        groups.remove(pair[1])
    return groups


def _cut(ink: np.ndarray, labels: np.ndarray, g: _Group, k: int) -> list[tuple[slice, slice, np.ndarray]]:
    """Cut a group into k pieces at the columns of least ink near its k equal parts."""
    mask = np.isin(labels[g.y0 : g.y1, g.x0 : g.x1], list(g.labels))
    w = g.x1 - g.x0
    column_ink = (ink[g.y0 : g.y1, g.x0 : g.x1] * mask).sum(0)
    cuts = [0]
    for i in range(1, k):
        target, reach = i * w / k, max(1, round(0.25 * w / k))
        lo, hi = max(cuts[-1] + 1, round(target) - reach), min(w - 1, round(target) + reach)
        cuts.append(lo + int(np.argmin(column_ink[lo : hi + 1])) if hi >= lo else round(target))
    cuts.append(w)
    pieces = []
    for c0, c1 in zip(cuts, cuts[1:]):
        part = np.zeros_like(mask)
        part[:, c0:c1] = mask[:, c0:c1]
        if part.any():
            rows, cols = np.nonzero(part.any(1))[0], np.nonzero(part.any(0))[0]
            r = slice(g.y0 + int(rows[0]), g.y0 + int(rows[-1]) + 1)
            c = slice(g.x0 + int(cols[0]), g.x0 + int(cols[-1]) + 1)
            pieces.append((r, c, part[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
    return pieces


def segment(
    ink: np.ndarray, split_ratio: float = SPLIT_RATIO, lone_split_ratio: float = 1.6
) -> list[tuple[slice, slice, np.ndarray]]:
    """Cut the ink of a row of digits into one ink image per digit, left to right.

    Connected components (8-neighbour); specks dropped; pieces of broken digits merged (see
    _merge_fragments); a group too wide for one digit (touching digits) cut at the columns
    with the least ink. (Choosing the cutting the model reads most confidently was tried: on
    300 strings of MNIST training digits it made 12 count errors, the width rule 9.)

    Args:
        ink: (H, W) ink map (ink_map).
        split_ratio: width/height above which a group holds several digits.
        lone_split_ratio: the same for an image with one group, compared to its own height
            (0.3% of single MNIST digits are wider than 1.5x their height).

    Returns:
        (rows, cols, mask) per digit: its bounding box and which pixels of the box are its ink.
    """
    labels, n = ndimage.label(ink > 0, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    groups = [
        _Group({i + 1}, s[0].start, s[0].stop, s[1].start, s[1].stop)
        for i, s in enumerate(ndimage.find_objects(labels))
        if areas[i] >= max(3, SPECK * areas.max())
    ]
    groups = _merge_fragments(groups, float(np.median([g.y1 - g.y0 for g in groups])))
    height = float(np.median([g.y1 - g.y0 for g in groups]))
    ratio = split_ratio if len(groups) > 1 else lone_split_ratio
    widths = [g.x1 - g.x0 for g in groups if g.x1 - g.x0 <= ratio * height]
    digit_width = float(np.median(widths)) if widths else 0.75 * height  # MNIST digits: ~0.75 as wide as high
    pieces = []
    for g in groups:
        w = g.x1 - g.x0
        pieces += _cut(ink, labels, g, max(2, round(w / digit_width)) if w > ratio * height else 1)
    return sorted(pieces, key=lambda p: p[1].start)


def prepare(grey: np.ndarray, split: bool = True, name: str = "image") -> list[Digit]:
    """An image of one digit or a row of digits -> its digits, MNIST-style, left to right.

    Args:
        grey: (H, W) grey levels in [0, 1] (read_grey).
        split: cut the ink into digits (a number); False reads all the ink as one digit.
        name: the file, named in errors.
    """
    ink = ink_map(grey, name)
    labels, n = ndimage.label(ink > 0, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    ink = ink * (areas >= max(3, SPECK * areas.max()))[labels]  # dust and noise specks removed
    rows, cols = np.nonzero(ink)
    # Ink no wider than high is one digit, however many pieces it is broken into: a number
    # of two digits is ~1.6x as wide as high (two 0.75-wide digits and a gap), "11" excepted.
    if not split or cols.max() - cols.min() <= rows.max() - rows.min():
        return [Digit(to_mnist(ink), (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))]
    digits = []
    for r, c, mask in segment(ink):
        digits.append(Digit(to_mnist(ink[r, c] * mask), (int(c.start), int(r.start), int(c.stop), int(r.stop))))
    if not digits:
        raise ImageError(f"{name} holds no ink after removing the background. Is it blank?")
    return digits
