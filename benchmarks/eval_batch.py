"""Validation time against the evaluation batch size (`data.eval_batch_size`).

    python benchmarks/eval_batch.py                              # the table in benchmarks/README.md
    python benchmarks/eval_batch.py --batches 64 256 --reps 1 --limit 2   # smoke run

Runs Lightning's `trainer.validate` over the 5k-image validation split of MNIST with the
model of `experiment=seed_baseline` (the article's CNN, channels_last, untrained: the time
does not depend on the weights), once per batch size per repetition, the sizes alternating;
prints the median seconds and images/s. Why: on a CPU, bigger evaluation batches are not
"simply faster" as on a GPU; a 1000-image batch's activations (32x28x28 floats per image,
100 MB) outgrow the caches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mnist_lab import CONF_DIR
from mnist_lab.classifier import Classifier
from mnist_lab.train import setup_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1000])
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions; the median is reported")
    p.add_argument("--limit", type=int, default=None, help="validate only this many batches (smoke runs)")
    p.add_argument("--override", action="append", default=[], help="extra config override, e.g. model=mlp")
    args = p.parse_args()

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=seed_baseline", *args.override])
    pl.seed_everything(0, verbose=False)
    datamodule = setup_data(cfg)
    module = Classifier(
        net=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        num_classes=cfg.data.num_classes,
        channels_last=cfg.channels_last,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=args.limit,
    )
    seconds: dict[int, list[float]] = {b: [] for b in args.batches}
    for _ in range(args.reps):
        for batch in args.batches:
            datamodule.eval_batch_size = batch
            start = time.perf_counter()
            trainer.validate(module, datamodule=datamodule, verbose=False)
            seconds[batch].append(time.perf_counter() - start)

    images = len(datamodule.splits.val_y)
    from mnist_lab.records import machine_record

    print(f"machine: {machine_record()}")
    print(f"{'eval batch':>10} {'seconds':>8} {'images/s':>9}")
    for batch, ts in seconds.items():
        med = statistics.median(ts)
        n = images if args.limit is None else min(images, args.limit * batch)
        print(f"{batch:>10} {med:8.3f} {n / med:9.0f}")


if __name__ == "__main__":
    main()
