"""Training-step time of mnist_lab's CNN against its conv widths, batch-norm placement and batch size.

    python benchmarks/widths.py                                  # the table in benchmarks/README.md
    python benchmarks/widths.py --widths 16/32 --norm before after --bf16   # batch norm before/after the pool
    python benchmarks/widths.py --widths 16/32 --batches 128 --bf16 --profile 8   # and each network's costliest ops
    python benchmarks/widths.py --widths 16/32 --batches 64 --steps 3 --reps 1   # smoke run

Why it exists: on CPU the cost of a convolution is not proportional to its multiply-adds.
oneDNN has fast kernels for some channel counts and not others, so a network with fewer
channels can be slower. This measures one optimizer step (forward, cross-entropy, backward,
Adam) of `mnist_lab.models.CNN` with batch norm, in channels_last, on random inputs (the
time does not depend on the pixel values), for each conv1/conv2 width pair and each
placement of batch norm (`before` the pool, the default network, or `after` it:
`model.norm_after_pool`), in fp32 or, with --bf16, under bf16 autocast as
`trainer.precision=bf16-mixed` runs it. The networks run alternately within each
repetition, and the figure is the median over repetitions of the mean step time, so machine
noise hits all networks alike. --profile N then runs `--steps` more steps of each network
under torch.profiler and prints its N costliest ops by self CPU time. `epoch s` is that step time times
the steps of one 55k-image epoch: compute only, without Lightning's per-step overhead,
validation or data indexing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mnist_lab.models import CNN

TRAIN_IMAGES = 55_000  # the training split of every MNIST run (60k minus 5k validation)


def train_step(net: torch.nn.Module, batch: int, channels_last: bool, bf16: bool = False) -> Callable[[], None]:
    """One training step of `net` on a fixed random batch, as a function, after two warm-up steps."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # oneDNN picks and caches its kernels on the first calls
        one_step()
    return one_step


def step_seconds(net: torch.nn.Module, batch: int, steps: int, channels_last: bool, bf16: bool = False) -> float:
    """Mean seconds of one training step over `steps` steps, after two warm-up steps."""
    one_step = train_step(net, batch, channels_last, bf16)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--widths",
        nargs="+",
        default=["32/64", "16/32", "24/32", "32/32", "12/24", "8/16", "16/64"],
        help="conv1/conv2 channel pairs",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument(
        "--norm",
        nargs="+",
        choices=["before", "after"],
        default=["before"],
        help="batch norm before the pool (the default network) or after it (model.norm_after_pool=true)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as trainer.precision=bf16-mixed")
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print each network's N costliest ops (first batch size)"
    )
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions; the median is reported")
    p.add_argument("--no-channels-last", action="store_true", help="PyTorch's default NCHW layout instead")
    args = p.parse_args()

    pairs = []
    for w in args.widths:
        try:
            c1, c2 = (int(v) for v in w.split("/"))
        except ValueError:
            raise SystemExit(f"--widths {w!r}: give conv1/conv2 channel counts such as 16/32.") from None
        pairs.append((c1, c2))
    torch.manual_seed(0)
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    nets = {
        (c1, c2, norm): CNN(
            conv1_channels=c1, conv2_channels=c2, hidden=args.hidden, batch_norm=True, norm_after_pool=norm == "after"
        ).to(memory_format=fmt)
        for c1, c2 in pairs
        for norm in args.norm
    }
    times: dict[tuple[int, int, str, int], list[float]] = {}
    for _ in range(args.reps):
        for batch in args.batches:
            for key, net in nets.items():
                t = step_seconds(net, batch, args.steps, not args.no_channels_last, args.bf16)
                times.setdefault((*key, batch), []).append(t)

    from mnist_lab.records import machine_record

    print(f"machine: {machine_record()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'NCHW' if args.no_channels_last else 'channels_last'}, hidden {args.hidden}, batch norm, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}"
    )
    print(f"{'conv1/conv2':>11} {'norm':>6} {'batch':>6} {'params':>8} {'ms/step':>8} {'epoch s':>8}")
    for (c1, c2, norm, batch), ts in times.items():
        ms = statistics.median(ts) * 1e3
        params = sum(p.numel() for p in nets[(c1, c2, norm)].parameters())
        epoch = ms / 1e3 * math.ceil(TRAIN_IMAGES / batch)
        print(f"{f'{c1}/{c2}':>11} {norm:>6} {batch:>6} {params:>8} {ms:8.2f} {epoch:8.2f}")
    if len(args.norm) == 2:  # the two placements side by side, repetition by repetition
        for (c1, c2, norm, batch), ts in times.items():
            if norm == "after":
                ratios = [a / b for a, b in zip(ts, times[(c1, c2, "before", batch)], strict=True)]
                print(
                    f"{c1}/{c2} batch {batch}: after/before {statistics.median(ratios):.2f} "
                    f"(per repetition {' '.join(f'{r:.2f}' for r in ratios)})"
                )
    if args.profile:
        from torch.profiler import profile

        batch = args.batches[0]
        for (c1, c2, norm), net in nets.items():
            one_step = train_step(net, batch, not args.no_channels_last, args.bf16)
            with profile() as prof:
                for _ in range(args.steps):
                    one_step()
            print(f"profile: {c1}/{c2}, norm {norm}, batch {batch}, {args.steps} steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


if __name__ == "__main__":
    main()
