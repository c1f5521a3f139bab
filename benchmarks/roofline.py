"""The roofline column of the benchmark tables: a network's training FLOPs against this machine's matmul rate.

    python benchmarks/roofline.py          # the CNN's training FLOPs per image, the matmul rate per precision

`train_flops_per_image` counts one training step (forward, cross-entropy, backward) with
torch.utils.flop_counter.FlopCounterMode, which counts what autograd really runs: the first
conv computes no input gradient (the images need none), so the CNN's step is 26.6 MFLOP per
image, not the textbook 3x forward (27.9). `matmul_gflops` is the rate of a 2048x2048 matmul
in a precision (median of a few), the ceiling that a step's convolutions and linears could
at best reach on this machine; a table's `of mm` column is a run's GFLOP/s over that rate.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# The dtype that a Lightning precision runs its matmuls and convolutions in (bf16-mixed: autocast to bf16).
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISION_DTYPES = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "bf16-true": "bf16", "bf16": "bf16"}


def train_flops_per_image(net: nn.Module, in_channels: int = 1, batch: int = 4) -> float:
    """FLOPs of one training step of `net` per (in_channels, 28, 28) image: forward, cross-entropy, backward."""
    x = torch.randn(batch, in_channels, 28, 28)
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_gflops(dtype_name: str = "fp32", n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of an n x n matmul in dtype "fp32" or "bf16" on `device`, median of `reps` after a warm-up."""
    dtype = MATMUL_DTYPES[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)  # oneDNN/MKL (cuBLAS) pick and cache their kernels on the first call
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def synchronize(device: str | torch.device) -> None:
    """Wait for `device`'s queued kernels (a GPU runs them asynchronously), so a clock read after it is true."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_dtype(precision: str) -> str:
    """The matmul dtype ("fp32" or "bf16") of a Lightning precision such as "32-true" or "bf16-mixed"."""
    return PRECISION_DTYPES[str(precision)]


def dtype_of(overrides: list[str], default: str = "32-true") -> str:
    """The matmul dtype of the trainer.precision that a list of config overrides sets (else of `default`)."""
    values = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == "trainer.precision"]
    return matmul_dtype(values[-1] if values else default)


if __name__ == "__main__":
    from mnist_lab.models import CNN
    from mnist_lab.records import machine_record

    print(f"machine: {machine_record()}")
    print(f"CNN training step: {train_flops_per_image(CNN()) / 1e6:.2f} MFLOP per image")
    for name in MATMUL_DTYPES:
        print(f"2048x2048 matmul, {name}: {matmul_gflops(name):.1f} GFLOP/s")
