"""Digit classifiers: plain nn.Modules that name their layer groups for fine-tuning.

Every model takes (B, C, 28, 28) float images and returns (B, num_classes) logits, and
exposes `group_names`: its layer groups from input to output. Each group is a submodule of
that name, so a fine-tune strategy says `freeze: [conv1, conv2]` and the mechanism in
`mnist_lab.finetune` finds `model.conv1`, `model.conv2`. The last group is always `head`.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_lab.errors import ConfigError


def _pool_relu() -> list[nn.Module]:
    # Max-pool before ReLU: ReLU is monotone, so max(relu(x)) == relu(max(x)) bit for bit
    # (and the gradients match), but the ReLU then touches 4x fewer values. Measured on the
    # 2-core CPU in benchmarks/: part of the ~2x epoch-time saving over the article's order.
    return [nn.MaxPool2d(2), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """The reference article's CNN: (B, in_channels, 28, 28) -> (B, num_classes) logits.

    The article writes conv 1->32 5x5, pool, conv 32->64 3x3, pool, then `view(-1, 64*7*7)`,
    but with no padding 28 -> 24 -> 12 -> 10 -> 5 leaves 64*5*5 and its view fails. Padding 2
    on the 5x5 conv and 1 on the 3x3 conv keep 28 -> 28 -> 14 -> 14 -> 7, so 64*7*7 holds.
    The defaults (no dropout, no batch norm, widths 32/64/128) are the article's network.

    With batch_norm, each conv block is conv -> batch norm -> pool -> ReLU; norm_after_pool
    makes it conv -> pool -> batch norm -> ReLU. That is another network, not the same
    arithmetic reordered: batch norm then takes its statistics over the pooled values. It
    normalises 4x fewer values, and on CPU batch norm's backward is among the costliest ops of
    the slim speed-run network (docs/performance.md, "Batch norm after the pool").
    """

    group_names = ("conv1", "conv2", "fc1", "head")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        conv1_channels: int = 32,
        conv2_channels: int = 64,
        hidden: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = False,
        norm_after_pool: bool = False,
    ) -> None:
        super().__init__()

        def block(conv: nn.Conv2d) -> nn.Sequential:
            if not batch_norm:
                return nn.Sequential(conv, *_pool_relu())
            pool, relu = _pool_relu()
            norm = nn.BatchNorm2d(conv.out_channels)
            return nn.Sequential(conv, pool, norm, relu) if norm_after_pool else nn.Sequential(conv, norm, pool, relu)

        # bias is redundant in front of batch norm (it is subtracted out again; a max-pool
        # between them does not change that, as it commutes with adding a per-channel constant).
        self.conv1 = block(nn.Conv2d(in_channels, conv1_channels, 5, padding=2, bias=not batch_norm))
        self.conv2 = block(nn.Conv2d(conv1_channels, conv2_channels, 3, padding=1, bias=not batch_norm))
        self.fc1 = nn.Sequential(
            nn.Flatten(),
            nn.Linear(conv2_channels * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, c1, 14, 14)
        x = self.conv2(x)  # (B, c2, 7, 7)
        x = self.fc1(x)  # (B, hidden)
        return self.head(x)  # (B, num_classes)


class ConvNet(nn.Module):
    """A VGG-style stack for accuracy over speed: (B, in_channels, 28, 28) -> (B, num_classes).

    Each block is one or more 3x3 conv -> batch norm -> ReLU layers (padding 1, so the size
    holds) closed by a 2x2 max-pool; block i is the layer group `conv{i}`, so with two blocks
    the strategies written for the CNN (`frozen: [conv1, conv2]`) apply unchanged. The default
    `blocks=[[32, 32], [64, 64]]` is 28 -> 14 -> 7, then fc1 (64*7*7 -> hidden) and the head.
    Up to 4 blocks (28 -> 14 -> 7 -> 3 -> 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        blocks: list[list[int]] = [[32, 32], [64, 64]],  # noqa: B006 - never mutated; the YAML's shape
        hidden: int = 256,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= len(blocks) <= 4 or not all(blocks) or any(w < 1 for ws in blocks for w in ws):
            raise ConfigError(
                f"model.blocks is {blocks}; it must be 1 to 4 blocks (each 2x2 pool halves 28 -> 14 -> 7 -> 3 -> 1), "
                "each a non-empty list of conv widths >= 1, e.g. [[32, 32], [64, 64]]."
            )
        width = in_channels
        for i, widths in enumerate(blocks, 1):
            layers: list[nn.Module] = []
            for j, out in enumerate(widths):
                # bias is redundant in front of batch norm (it is subtracted out again).
                layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
                layers += _pool_relu() if j == len(widths) - 1 else [nn.ReLU(inplace=True)]
                width = out
            if block_dropout:
                # Appended last, so the conv/BN indices (and checkpoints' keys) do not move.
                layers.append(nn.Dropout(block_dropout))
            setattr(self, f"conv{i}", nn.Sequential(*layers))
        side = 28 >> len(blocks)
        self.fc1 = nn.Sequential(
            nn.Flatten(), nn.Linear(width * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.head = nn.Linear(hidden, num_classes)
        self.group_names = (*(f"conv{i}" for i in range(1, len(blocks) + 1)), "fc1", "head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.group_names[:-1]:
            x = getattr(self, name)(x)  # conv blocks: (B, width, 28 >> i, 28 >> i); fc1: (B, hidden)
        return self.head(x)  # (B, num_classes)


class MLP(nn.Module):
    """A two-hidden-layer perceptron: (B, in_channels, 28, 28) -> (B, num_classes) logits."""

    group_names = ("fc1", "fc2", "head")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        hidden1: int = 512,
        hidden2: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * 28 * 28, hidden1), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.fc2 = nn.Sequential(nn.Linear(hidden1, hidden2), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.head = nn.Linear(hidden2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)  # (B, hidden1)
        x = self.fc2(x)  # (B, hidden2)
        return self.head(x)  # (B, num_classes)


class LeNet5(nn.Module):
    """LeCun et al. 1998 LeNet-5 with ReLU and max-pool: (B, C, 28, 28) -> (B, num_classes).

    The original takes 32x32 inputs; padding 2 on the first conv gives MNIST's 28x28 the same
    28 -> 14 -> 10 -> 5 geometry, so fc1 sees 16*5*5.
    """

    group_names = ("conv1", "conv2", "fc1", "fc2", "head")

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), *_pool_relu())
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), *_pool_relu())
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc2 = nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True))
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 6, 14, 14)
        x = self.conv2(x)  # (B, 16, 5, 5)
        x = self.fc1(x)  # (B, 120)
        x = self.fc2(x)  # (B, 84)
        return self.head(x)  # (B, num_classes)
