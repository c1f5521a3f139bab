"""Batches of an in-memory dataset: one index operation per batch, resumable mid-epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


class TensorBatches:
    """Batches of an in-memory (x, y) pair: one index op per batch, no per-sample work.

    Shuffling uses a generator seeded with (seed, epoch), so the order of every epoch is a
    function of the config alone. The iterator is stateful (Lightning saves its state in
    checkpoints), so a run resumed mid-epoch sees the remaining batches of the same order.

    Under DDP each rank takes every world_size-th sample of that order (Lightning adds no
    sampler to a non-DataLoader). Evaluation shards are not padded, so every sample counts
    exactly once in the synchronised metrics; training shards are padded by wrapping around
    (as DistributedSampler does), so every rank runs the same number of steps.

    Args:
        x, y: images (N, C, H, W) and labels (N,).
        batch_size: samples per batch (per rank).
        shuffle: a new order every epoch (training) or the stored order (evaluation).
        seed: seeds the shuffling.
        rank, world_size: this process's shard of the samples (0, 1 without DDP).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # epoch of the next pass
        self._skip = 0  # batches already consumed of that pass (set by load_state_dict)
        self._served = 0

    def _shard_size(self) -> int:
        n, w = len(self.y), self.world_size
        return math.ceil(n / w) if self.shuffle else len(range(self.rank, n, w))

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        # Counted when the pass starts: Lightning takes len(self) batches and never asks for
        # the next one, so code after the loop below would not run and every epoch would
        # repeat the first epoch's order.
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            if self.world_size > 1:  # pad by wrapping around, then every world_size-th sample
                order = order.repeat(math.ceil(self.world_size * self._shard_size() / n))
                order = order[: self.world_size * self._shard_size()][self.rank :: self.world_size]
        elif self.world_size > 1:
            order = torch.arange(self.rank, n, self.world_size)
        else:
            order = None
        if order is not None:  # drawn on the CPU (the same order on every device), used where x is
            order = order.to(self.x.device)
        start, self._served = self._skip, self._skip
        self._skip = 0
        for i in range(start, len(self)):
            self._served = i + 1
            if order is None:
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.x[sl], self.y[sl]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, int]:
        if self._skip:  # loaded, not iterated yet
            return {"epoch": self.epoch, "served": self._skip}
        if 0 < self._served < len(self):  # mid-pass: that pass again, without its served batches
            return {"epoch": self.epoch - 1, "served": self._served}
        return {"epoch": self.epoch, "served": 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._skip = state["epoch"], state["served"]
