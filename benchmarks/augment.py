"""What each training augmentation costs per batch, against a training step of the network it feeds.

    python benchmarks/augment.py                     # every conf/data/augment choice, experiment=best_accuracy
    python benchmarks/augment.py --reps 2 --steps 2  # smoke run

Augmentation runs on every training batch, on the device, before the step (mnist_lab.data.augment).
For each `data/augment` choice this times it on real MNIST batches (`--batch` images, [0, 1]
floats) and, in the same alternation, a training step (forward, loss, backward, optimizer) of
the `--experiment` preset's network in its precision, channels_last; `--reps` alternating
blocks of `--steps` calls each. Prints the median ms per batch and the augmentation's cost as
a fraction of the step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mnist_lab import CONF_DIR, ROOT_DIR
from mnist_lab.data import read_idx
from mnist_lab.data.pixels import normalize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--augment", nargs="+", default=sorted(f.stem for f in (CONF_DIR / "data" / "augment").glob("*.yaml"))
    )
    p.add_argument("--experiment", default="best_accuracy", help="whose network and precision the step uses")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={args.experiment}"])
        augments = {
            a: instantiate(compose("config", overrides=[f"data/augment={a}"]).data.augment) for a in args.augment
        }
    torch.manual_seed(0)
    n = args.batch * args.steps
    images = read_idx(ROOT_DIR / "data" / "mnist" / "train-images-idx3-ubyte.gz")[:n].unsqueeze(1)
    labels = read_idx(ROOT_DIR / "data" / "mnist" / "train-labels-idx1-ubyte.gz")[:n].long()
    pixels = images.float().div_(255)
    net = instantiate(cfg.model).to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    bf16 = str(cfg.trainer.precision).startswith("bf16")

    def batch(i: int) -> slice:
        return slice(i * args.batch, (i + 1) * args.batch)

    def step(i: int) -> None:
        x = normalize(images[batch(i)]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), labels[batch(i)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    calls = {"training step": step, **{a: (lambda i, aug=aug: aug(pixels[batch(i)])) for a, aug in augments.items()}}
    for call in calls.values():  # warm-up: oneDNN picks its kernels, the allocator its blocks
        call(0)
    ms: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.reps):
        for name, call in calls.items():
            start = time.perf_counter()
            for i in range(args.steps):
                call(i)
            ms[name].append((time.perf_counter() - start) / args.steps * 1e3)

    from mnist_lab.records import machine_record

    print(f"machine: {machine_record()}")
    print(f"step: experiment={args.experiment} ({cfg.model._target_}, {cfg.trainer.precision}), batch {args.batch}")
    print(f"{'':<16} {'ms/batch':>9} {'of step':>8}")
    step_ms = statistics.median(ms["training step"])
    for name, values in ms.items():
        med = statistics.median(values)
        print(f"{name:<16} {med:9.2f} {med / step_ms:8.2f}")


if __name__ == "__main__":
    main()
