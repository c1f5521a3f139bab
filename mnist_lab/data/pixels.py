"""Pixels as the networks see them: one normalisation for training, evaluation, export and prediction."""

from __future__ import annotations

import torch

# MNIST's training-set statistics, the article's Normalize(0.1307, 0.3081).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def normalize(x: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD, augment=None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float, as ToTensor() then Normalize(mean, std).

    Args:
        augment: a module applied to the [0, 1] float batch before normalising, or None.
    """
    x = x.float().div_(255)
    if augment is not None:
        x = augment(x)
    return x.sub_(mean).div_(std)
