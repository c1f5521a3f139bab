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
        b = x.shape[0]
        kw: dict[str, Any] = dict(device=x.device, dtype=x.dtype)
        angle = (torch.rand(b, **kw) * 2 - 1) * math.radians(self.degrees)
        zoom = torch.empty(b, **kw).uniform_(*self.scale)
        shift = (torch.rand(b, 2, **kw) * 2 - 1) * (2 * self.translate)  # grid coords span 2
        # theta maps output coordinates to input ones, hence the inverse zoom.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
