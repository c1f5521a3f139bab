"""Bringing other digit images into MNIST's form: uint8 (N, 1, 28, 28), white ink on black, centred."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mnist_lab.errors import ConfigError, DataError

# ITU-R 601 luma weights: what PIL's convert("L") uses for RGB -> grey.
_LUMA = (0.299, 0.587, 0.114)
# Images converted per chunk: SVHN's 73k RGB 32x32 images as float would take ~900 MB at once.
_CHUNK = 8192


def to_mnist_form(images: torch.Tensor, box: int = 28, center: bool = False, polarity: str = "keep") -> torch.Tensor:
    """(N, C, H, W) uint8 or [0, 1] float images -> (N, 1, 28, 28) uint8, white ink on black.

    Args:
        images: any size and channel count (3 channels are read as RGB).
        box: the image is resized to box x box (antialiased bilinear) and placed in the
            middle of the 28x28 frame (MNIST fits its digits into a 20x20 box).
        center: then shift each image by whole pixels so its centre of mass is at the frame's
            centre, as MNIST does (the shift keeps the box inside the frame).
        polarity: "keep", "invert" (dark ink on light ground), or "auto": per image, invert
            when the border is brighter than the image's mean (the ground is light).
    """
    if polarity not in ("keep", "invert", "auto"):
        raise ConfigError(f"polarity={polarity!r}: use keep, invert or auto.")
    if not 1 <= box <= 28:
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
        if x.shape[-2:] != (box, box):
            x = F.interpolate(x, size=(box, box), mode="bilinear", antialias=True, align_corners=False)
        margin = (28 - box) // 2
        x = F.pad(x, (margin, 28 - box - margin, margin, 28 - box - margin))  # (n, 1, 28, 28)
        if center:
            x = _center_of_mass_shift(x, limit=margin)
        out.append(x.mul(255).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 1, 28, 28, dtype=torch.uint8)


def _center_of_mass_shift(x: torch.Tensor, limit: int) -> torch.Tensor:
    """Shift each (1, 28, 28) image by whole pixels (at most `limit`) to centre its mass."""
    mass = x.sum((1, 2, 3)).clamp_min(1e-8)
    coords = torch.arange(28, dtype=x.dtype) + 0.5  # pixel centres; the frame's centre is 14
    cy = (x.sum((1, 3)) * coords).sum(1) / mass
    cx = (x.sum((1, 2)) * coords).sum(1) / mass
    dy = (14 - cy).round().clamp(-limit, limit).long()
    dx = (14 - cx).round().clamp(-limit, limit).long()
    # Whole-pixel shifts as a gather: exact (no resampling), one op for the whole batch.
    src_r = torch.arange(28).view(1, 28) - dy.view(-1, 1)  # (n, 28): the row each output row reads
    src_c = torch.arange(28).view(1, 28) - dx.view(-1, 1)
    shifted = x[
        torch.arange(len(x)).view(-1, 1, 1), 0, src_r.clamp(0, 27).unsqueeze(2), src_c.clamp(0, 27).unsqueeze(1)
    ]
    # Pixels that come from outside the frame are background (the clamp repeated the edge).
    inside = ((src_r >= 0) & (src_r < 28)).unsqueeze(2) & ((src_c >= 0) & (src_c < 28)).unsqueeze(1)
    return (shifted * inside).unsqueeze(1)
