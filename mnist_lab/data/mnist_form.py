"""MNIST's form: uint8 (N, 1, 28, 28), white ink on black, the digit fitted into a 20x20 box and centred by mass.

`fit_to_box` is MNIST's own preparation (LeCun et al.) and the one home of its arithmetic:
the bundled targets call it on whole datasets, predict and serve (mnist_lab/inference/imageprep.py)
on each digit cut out of an image file. `to_mnist_form` brings a dataset's images to it.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from mnist_lab.errors import ConfigError, DataError

# MNIST digits fill a 20x20 box (99.97% of the test set has max(height, width) == 20) and
# their centre of mass sits at pixel (14.0, 14.0) +- 0.3 (row and column indices from 0,
# measured on the 10k test images).
BOX, SIZE, CENTRE = 20, 28, 14.0
# The digit's extent (what must fit the 20x20 box) is where its ink reaches half strength: the
# edge of the binary NIST strokes MNIST was made from. Faint halos of a smooth upscale or a
# blurred photo lie outside it; they are kept in the crop but not counted in the size.
EXTENT_LEVEL = 0.5
# ITU-R 601 luma weights: what PIL's convert("L") uses for RGB -> grey.
_LUMA = (0.299, 0.587, 0.114)
# Images converted per chunk: SVHN's 73k RGB 32x32 images as float would take ~900 MB at once.
_CHUNK = 8192


def _span(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """First and last True index along the last dim of (N, L) masks (rows without any: 0, -1)."""
    idx = torch.arange(mask.shape[1])
    first = torch.where(mask, idx, mask.shape[1]).amin(1)
    last = torch.where(mask, idx, -1).amax(1)
    return first.tolist(), last.tolist()


def fit_to_box(ink: torch.Tensor, box: int = BOX) -> torch.Tensor:
    """(N, 1, H, W) ink in [0, 1] on a 0 background -> (N, 1, 28, 28) uint8 in MNIST's form.

    Each image is cropped to its ink, scaled (antialiased, keeping its aspect ratio) so that
    its extent fits box x box, its strongest stroke brought to 255, and placed in 28x28 with
    its centre of mass at (14, 14), by whole pixels and inside the frame. Images of one crop
    and output size are resampled together: the result does not depend on the batch.

    Args:
        ink: float images (float64 is computed in float64); only the digit's ink is non-zero.
            An image without ink stays black.
        box: the side of the square the digit's extent is fitted into (MNIST: 20).
    """
    if not 1 <= box <= SIZE:
        raise ConfigError(f"box={box}: the digit box must fit the 28x28 frame (1..28).")
    x = (ink if ink.is_floating_point() else ink.float())[:, 0]  # (N, H, W), float64 kept as float64
    r0, r1 = _span((x > 0).any(2))
    c0, c1 = _span((x > 0).any(1))
    strong = x >= EXTENT_LEVEL * x.flatten(1).amax(1).view(-1, 1, 1)
    e0, e1 = _span(strong.any(2))
    f0, f1 = _span(strong.any(1))
    groups: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
    for i in range(len(x)):
        if r1[i] < 0:  # no ink
            continue
        h, w = r1[i] - r0[i] + 1, c1[i] - c0[i] + 1
        scale = box / max(e1[i] - e0[i] + 1, f1[i] - f0[i] + 1)
        groups[h, w, min(SIZE, max(1, round(h * scale))), min(SIZE, max(1, round(w * scale)))].append(i)
    out = torch.zeros(len(x), SIZE, SIZE)
    for (h, w, sh, sw), members in groups.items():
        crops = torch.stack([x[i, r0[i] : r0[i] + h, c0[i] : c0[i] + w] for i in members]).unsqueeze(1)
        # Antialiased resampling: averages the pixels each output pixel covers when shrinking.
        digit = F.interpolate(crops, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
        digit = digit[:, 0].clamp_(0, 1)  # (n, sh, sw)
        # A thin pen fades when shrunk; MNIST's strokes peak at 255.
        digit = digit / digit.amax((1, 2), keepdim=True).clamp(min=1e-6)
        mass = digit.sum((1, 2))
        cy = ((digit.sum(2) * torch.arange(sh)).sum(1) / mass).tolist()
        cx = ((digit.sum(1) * torch.arange(sw)).sum(1) / mass).tolist()
        for k, i in enumerate(members):
            # A whole-pixel shift (no resampling blur) putting the centre of mass at (14, 14), kept inside the frame.
            top = min(max(round(CENTRE - cy[k]), 0), SIZE - sh)
            left = min(max(round(CENTRE - cx[k]), 0), SIZE - sw)
            out[i, top : top + sh, left : left + sw] = digit[k]
    return (out * 255).round().to(torch.uint8).unsqueeze(1)


def to_mnist_form(images: torch.Tensor, box: int = 28, center: bool = False, polarity: str = "keep") -> torch.Tensor:
    """(N, C, H, W) uint8 or [0, 1] float images -> (N, 1, 28, 28) uint8, white ink on black.

    Args:
        images: any size and channel count (3 channels are read as RGB).
        box: with center, the box the digit is fitted into (fit_to_box; MNIST: 20); without,
            the whole image is resized to box x box (antialiased bilinear) and placed in the
            middle of the 28x28 frame.
        center: MNIST's preparation (fit_to_box): crop to the ink, fit the box keeping the
            aspect ratio, centre by mass. False keeps the image's own framing (SVHN's crops
            with their neighbouring digits, EMNIST's frames).
        polarity: "keep", "invert" (dark ink on light ground), or "auto": per image, invert
            when the border is brighter than the image's mean (the ground is light).
    """
    if polarity not in ("keep", "invert", "auto"):
        raise ConfigError(f"polarity={polarity!r}: use keep, invert or auto.")
    if not 1 <= box <= SIZE:
        raise ConfigError(f"box={box}: the digit box must fit the 28x28 frame (1..28).")
    out = []
    for chunk in images.split(_CHUNK):
        x = chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk.float()
        if x.shape[1] == 3:
            x = sum(w * x[:, i : i + 1] for i, w in enumerate(_LUMA))
        elif x.shape[1] != 1:
            raise DataError(f"Images with {x.shape[1]} channels: expected 1 (grey) or 3 (RGB).")
        if polarity == "invert":
            x = 1 - x
        elif polarity == "auto":
            border = torch.cat(
                [
                    x[..., :2, :].flatten(1),
                    x[..., -2:, :].flatten(1),
                    x[..., :, :2].flatten(1),
                    x[..., :, -2:].flatten(1),
                ],
                1,
            ).mean(1)
            light = (border > x.flatten(1).mean(1)).view(-1, 1, 1, 1)
            x = torch.where(light, 1 - x, x)
        if center:
            out.append(fit_to_box(x, box))
            continue
        if x.shape[-2:] != (box, box):
            x = F.interpolate(x, size=(box, box), mode="bilinear", antialias=True, align_corners=False)
        margin = (SIZE - box) // 2
        x = F.pad(x, (margin, SIZE - box - margin, margin, SIZE - box - margin))  # (n, 1, 28, 28)
        out.append(x.mul(255).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 1, SIZE, SIZE, dtype=torch.uint8)
