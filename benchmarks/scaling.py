"""How mnist_lab's epoch time and peak memory grow with dataset size and batch size.

    python benchmarks/scaling.py                       # sizes 10k/30k/55k at batch 64, batches 64..1024
    python benchmarks/scaling.py --sizes 2000 --batches 64 --epochs 1   # smoke run

Each point is a fresh subprocess running `train(cfg)` (the article's CNN and SGD recipe,
full Lightning path with TensorBoard and checkpoints) for `--epochs` epochs; the figure is
the median training-epoch time, images/s, and the process's peak resident memory. The
roofline columns: the training GFLOP/s (the network's FLOPs per image, benchmarks/roofline.py)
and that as a fraction (`of mm`) of a 2048x2048 matmul's rate in the run's precision, timed
once before the points (median of 5; printed on the machine line).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

# benchmarks/ is the script's directory, so its modules import by name.
from compare_article import device_overrides
from roofline import dtype_of, matmul_gflops, train_flops_per_image
from workers import emit, run_worker


def worker(train_size: int, batch_size: int, epochs: int, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mnist_lab import CONF_DIR
    from mnist_lab.train import train

    out = Path(tempfile.mkdtemp(prefix="bench_scaling_")) / "run"  # removed by workers.run_worker
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "experiment=seed_baseline",
                f"data.train_size={train_size}",
                f"data.batch_size={batch_size}",
                f"trainer.max_epochs={epochs}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.progress_bar=null",
                f"paths.output_dir={out}",
                *device_overrides(overrides),  # the CPU, as the matmul of its roofline column
                *overrides,
            ],
        )
    metrics = train(cfg)
    epoch_s = statistics.median(metrics["epoch_seconds"])
    emit(
        {
            "train_size": train_size,
            "batch_size": batch_size,
            "median_epoch_s": epoch_s,
            "images_per_s": train_size / epoch_s,
            "test_acc": metrics["test/acc"],
            "train_flops_per_image": train_flops_per_image(instantiate(cfg.model), cfg.model.get("in_channels", 1)),
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 55_000])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--override", action="append", default=[], help="extra config override for every point")
    p.add_argument("--worker", type=int, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker, args.epochs, args.override)

    points = [(n, 64) for n in args.sizes] + [(max(args.sizes), b) for b in args.batches if b != 64]
    from mnist_lab.records import machine_record

    dtype = dtype_of(args.override)
    matmul = matmul_gflops(dtype)
    print(f"machine: {machine_record()}  matmul 2048x2048 {dtype}: {matmul:.1f} GFLOP/s")
    print(
        f"{'train images':>12} {'batch':>6} {'epoch s':>8} {'img/s':>8} {'GFLOP/s':>8} {'of mm':>6} {'peak MiB':>9} "
        f"{'test acc':>8}"
    )
    for n, b in points:
        overrides = [f"--override={o}" for o in args.override]
        r = run_worker(__file__, "--worker", n, b, "--epochs", args.epochs, *overrides, name=f"point ({n}, {b})")
        gflops = r["train_flops_per_image"] * r["images_per_s"] / 1e9
        print(
            f"{n:>12} {b:>6} {r['median_epoch_s']:8.2f} {r['images_per_s']:8.0f} {gflops:8.1f} {gflops / matmul:6.2f} "
            f"{r['peak_rss_mib']:9.0f} {r['test_acc']:8.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
