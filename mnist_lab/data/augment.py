"""Augmentation of training batches on the device."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mnist_lab.errors import ConfigError


class RandomAffine(torch.nn.Module):
    """Per-sample random rotation, translation and scale of a (B, C, H, W) float batch.

    torchvision's v2.RandomAffine draws one transform per call, so on a batch tensor every
    image would get the same one; per-sample transforms through it would mean a Python loop
    over the batch. One affine_grid + grid_sample call does the whole batch on the device.

    Args:
        degrees: rotation drawn uniformly from [-degrees, degrees].
        translate: shift drawn uniformly from [-translate, translate] of the image size, per axis.
        scale: zoom factor drawn uniformly from [scale[0], scale[1]].
    """

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if degrees < 0 or not 0 <= translate < 1 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(
                f"data.augment has degrees={degrees}, translate={translate}, scale={list(scale)}; "
                "degrees must be >= 0, translate in [0, 1) and scale a [min, max] pair with 0 < min <= max."
            )
        self.degrees, self.translate, self.scale = degrees, translate, tuple(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, self.grid(x), mode="bilinear", padding_mode="zeros", align_corners=False)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Where each output pixel reads the input: (B, H, W, 2), x then y, in [-1, 1] grid units."""
        b = x.shape[0]
        kw: dict[str, Any] = dict(device=x.device, dtype=x.dtype)
        angle = (torch.rand(b, **kw) * 2 - 1) * math.radians(self.degrees)
        zoom = torch.empty(b, **kw).uniform_(*self.scale)
        shift = (torch.rand(b, 2, **kw) * 2 - 1) * (2 * self.translate)  # grid coords span 2
        # theta maps output coordinates to input ones, hence the inverse zoom.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        return F.affine_grid(theta, list(x.shape), align_corners=False)


class RandomElastic(RandomAffine):
    """RandomAffine followed by an elastic distortion (Simard et al. 2003), in the same resampling.

    Each image gets its own displacement field: uniform noise in [-1, 1] per pixel and axis,
    smoothed by a Gaussian of `sigma` pixels and scaled by `alpha` pixels, so strokes bend
    locally the way handwriting varies, which an affine map cannot do. torchvision's
    v2.ElasticTransform draws one field per call (every image of a batch bent alike), hence
    this batched version; the field is added to the affine grid, so the image is interpolated
    once.

    Args:
        alpha: strength of the displacement, in pixels (0: the affine part only).
        sigma: smoothness of the displacement (the Gaussian's standard deviation), in pixels.
        degrees, translate, scale: the affine part, as in RandomAffine.
    """

    def __init__(
        self,
        alpha: float = 34.0,
        sigma: float = 4.0,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
    ):
        super().__init__(degrees, translate, scale)
        if alpha < 0 or sigma <= 0:
            raise ConfigError(
                f"data.augment has alpha={alpha}, sigma={sigma}; alpha (pixels of displacement) must be >= 0 "
                "and sigma (pixels of smoothing) > 0, e.g. alpha=34, sigma=4 as in Simard et al. 2003."
            )
        self.alpha, self.sigma = alpha, sigma

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        grid = super().grid(x)
        if not self.alpha:
            return grid
        b, _, h, w = x.shape
        noise = torch.rand(b, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1
        field = smooth(noise, self.sigma)  # (B, 2, H, W): x, y
        pixel = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)  # one pixel in grid units
        return grid + field.permute(0, 2, 3, 1) * (self.alpha * pixel)


def smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of (B, C, H, W) over +-3 sigma, reflecting at the borders, as two 1-D passes.

    The same result as torchvision's gaussian_blur, which convolves with the 2-D kernel: for
    sigma 4 that is 25 x 25 = 625 multiply-adds per value against 2 x 25 here, and on one CPU
    thread the blur then cost more than the rest of the augmentation (benchmarks/augment.py).
    """
    c, h, w = x.shape[1:]
    radius = min(math.ceil(3 * sigma), h - 1, w - 1)  # reflection pads by less than a side
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).expand(c, 1, -1)  # (C, 1, K): one kernel per channel
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.unsqueeze(2), groups=c)  # along W
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.unsqueeze(3), groups=c)  # along H
