"""mnist_lab against the reference article's hand-written loop, side by side.

    python -m benchmarks.compare_article                    # 3 alternating repetitions, 10 epochs
    python -m benchmarks.compare_article --reps 1 --epochs 1 --limit-batches 50 --limit-eval-batches 2 --results-dir /tmp/smoke

Each repetition runs, in fresh subprocesses and alternating, (a) the article's loop:
torchvision's MNIST dataset + PIL ToTensor/Normalize + DataLoader(batch 64, shuffle), its CNN
(ReLU before max-pool, padding fixed), SGD lr 0.001 momentum 0.9, the loss printed every 200
batches; and (b) mnist_lab's `train(cfg)` with `experiment=seed_baseline` (the full Lightning
path: validation every epoch, TensorBoard logging, checkpoints, test of the best checkpoint).
Both read the same real MNIST files (data/mnist); repetition r runs seed + r for both.
Prints per-epoch seconds (median of the training epochs: the training batches only, on both
sides; mnist_lab's validation is timed apart), images/s, peak resident memory, test
accuracy (mean over the repetitions' seeds), and the ratio mnist_lab / article of the
median epoch time. `--variant` adds mnist_lab runs with extra
overrides (e.g. `--variant "trainer.precision=bf16-mixed"`). The run's record goes to
benchmarks/results/ (benchmarks.common.write_record). The roofline columns: each
side's training GFLOP/s (its network's FLOPs per image, benchmarks.common.train_flops_per_image) and that as a
fraction (`of mm`) of a 2048x2048 matmul's rate in the same precision, timed in the parent
process once per repetition (median).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    dtype_of,
    emit,
    matmul_dtype,
    matmul_gflops,
    run_worker,
    train_flops_per_image,
    write_record,
)


def run_article(epochs: int, limit_batches: int | None, seed: int, limit_eval_batches: int | None = None) -> dict:
    """The article's training loop, verbatim in spirit; returns timings and test accuracy.

    `limit_eval_batches` tests on the first batches only (smoke runs), as Lightning's limit_test_batches.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision
    import torchvision.transforms as transforms

    torch.manual_seed(seed)
    # torchvision's MNIST reads uncompressed IDX files from <root>/MNIST/raw (in the TMPDIR that
    # common.run_worker removes after the run).
    root = Path(tempfile.mkdtemp(prefix="article_mnist_"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (ROOT / "data" / "mnist").glob("*.gz"):
        (raw / f.stem).write_bytes(gzip.decompress(f.read_bytes()))

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    trainset = torchvision.datasets.MNIST(root=str(root), train=True, download=False, transform=transform)
    testset = torchvision.datasets.MNIST(root=str(root), train=False, download=False, transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=64, shuffle=True)
    testloader = torch.utils.data.DataLoader(testset, batch_size=64, shuffle=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)  # padding fixed (see models.py)
            self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
            self.fc1 = nn.Linear(64 * 7 * 7, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = x.view(-1, 64 * 7 * 7)
            x = F.relu(self.fc1(x))
            return self.fc2(x)

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    epoch_seconds = []
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        running_loss = 0.0
        for i, (inputs, labels) in enumerate(trainloader):
            if limit_batches is not None and i >= limit_batches:
                break
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            images += len(labels)
            if i % 200 == 199:
                print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 200:.3f}", file=sys.stderr)
                running_loss = 0.0
        epoch_seconds.append(time.perf_counter() - t0)
    train_seconds = time.perf_counter() - start
    correct = total = 0
    with torch.no_grad():
        for i, (inputs, labels) in enumerate(testloader):
            if limit_eval_batches is not None and i >= limit_eval_batches:
                break
            correct += (net(inputs).argmax(1) == labels).sum().item()
            total += len(labels)
    return {
        "epoch_seconds": epoch_seconds,
        "train_seconds": train_seconds,
        "images": images,
        "test_acc": correct / total,
        "total_seconds": time.perf_counter() - start,
        "precision": "32-true",
        "train_flops_per_image": train_flops_per_image(Net()),
    }


def device_overrides(overrides: list[str]) -> list[str]:
    """`trainer.accelerator=cpu` unless `overrides` choose the trainer or its accelerator.

    The trainer's default accelerator is "auto": on a machine with a GPU, mnist_lab's side
    would train there while the loop it is compared with (the article's, the plain one) runs
    on the CPU. `trainer=gpu` (the speed run's GPU presets, parity --device cuda) keeps the GPU.
    """
    chosen = any(o.lstrip("+").partition("=")[0] in ("trainer", "trainer.accelerator") for o in overrides)
    return [] if chosen else ["trainer.accelerator=cpu"]


def run_mnist_lab(epochs: int, limit_batches: int | None, seed: int, overrides: list[str]) -> dict:
    """mnist_lab's train(cfg) on experiment=seed_baseline, everything on (TensorBoard, checkpoints),
    on the CPU unless the overrides choose another accelerator (`device_overrides`)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mnist_lab import CONF_DIR
    from mnist_lab.train import train

    out = Path(tempfile.mkdtemp(prefix="bench_mnist_lab_")) / "run"  # removed by common.run_worker
    # experiment=seed_baseline unless the overrides name another (benchmarks.speedrun).
    experiment = [o for o in overrides if o.startswith("experiment=")] or ["experiment=seed_baseline"]
    args = [
        *experiment,
        f"seed={seed}",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"paths.output_dir={out}",
        *([f"trainer.limit_train_batches={limit_batches}"] if limit_batches else []),
        *device_overrides(overrides),
        *(o for o in overrides if not o.startswith("experiment=")),
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args)
    start = time.perf_counter()
    metrics = train(cfg)
    batches = limit_batches or -(-55000 // cfg.data.batch_size)
    images = epochs * min(batches * cfg.data.batch_size, 55000)
    return {
        "epoch_seconds": metrics["epoch_seconds"],
        "val_seconds": metrics["val_seconds"],  # timed apart: the article's loop does not validate
        "train_seconds": metrics["train_seconds"],
        "images": images,
        "test_acc": metrics["test/acc"],
        "test_seconds": metrics["test_seconds"],
        "total_seconds": time.perf_counter() - start,
        "precision": str(cfg.trainer.precision),
        "train_flops_per_image": train_flops_per_image(instantiate(cfg.model), cfg.model.get("in_channels", 1)),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    if args.worker == "article":
        result = run_article(args.epochs, args.limit_batches, args.seed, args.limit_eval_batches)
    else:
        overrides = json.loads(args.overrides)
        if args.limit_eval_batches:
            n = args.limit_eval_batches  # first, so that an override of the run's own wins
            overrides = [f"trainer.limit_val_batches={n}", f"trainer.limit_test_batches={n}", *overrides]
        result = run_mnist_lab(args.epochs, args.limit_batches, args.seed, overrides)
    emit(result)


def spawn(
    kind: str,
    seed: int,
    overrides: Sequence[str] = (),
    *,
    epochs: int,
    limit_batches: int | None = None,
    limit_eval_batches: int | None = None,
    threads: int | None = None,
) -> dict:
    """One run of `kind` ("article" or "mnist_lab", with its config overrides) in a fresh process."""
    args = ["--worker", kind, "--epochs", epochs, "--seed", seed, "--overrides", json.dumps(list(overrides))]
    args += ["--limit-batches", limit_batches] if limit_batches else []
    args += ["--limit-eval-batches", limit_eval_batches] if limit_eval_batches else []
    args += ["--threads", threads] if threads else []
    return run_worker("benchmarks.compare_article", *args, name=f"{kind} run")


def summarise(name: str, runs: list[dict], matmul: dict[str, float]) -> dict:
    # The first epoch carries one-time costs (allocator warm-up, first checkpoint): the
    # median over all epochs of all repetitions is the steady-state figure.
    epochs = [s for r in runs for s in r["epoch_seconds"]]
    med = statistics.median(epochs)
    per_epoch_images = runs[0]["images"] / len(runs[0]["epoch_seconds"])
    gflops = runs[0]["train_flops_per_image"] * per_epoch_images / med / 1e9
    return {
        "name": name,
        "median_epoch_s": med,
        "rep_median_epoch_s": [statistics.median(r["epoch_seconds"]) for r in runs],
        "images_per_s": per_epoch_images / med,
        "gflops": gflops,
        "fraction_of_matmul": gflops / matmul[matmul_dtype(runs[0]["precision"])],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "test_acc": [r["test_acc"] for r in runs],
        "total_s": [r["total_seconds"] for r in runs],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit-batches", type=int, default=None, help="train only this many batches per epoch")
    p.add_argument(
        "--limit-eval-batches", type=int, default=None, help="validate and test only this many batches (smoke runs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first repetition (repetition r: seed + r)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--variant", action="append", default=[], help="extra mnist_lab run with these overrides")
    p.add_argument("--record", default="compare_article", help="the record's name (a run replaces its machine's)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the record goes")
    p.add_argument("--worker", choices=["article", "mnist_lab"], help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    plan = [("article", []), ("mnist_lab", [])] + [(f"mnist_lab {v}", v.split()) for v in args.variant]
    results: dict[str, list[dict]] = {name: [] for name, _ in plan}
    # The roofline: a matmul's rate in each dtype of the plan (fp32, bf16), timed once per repetition.
    mm: dict[str, list[float]] = {dtype: [] for dtype in dict.fromkeys(dtype_of(o) for _, o in plan)}
    run = {
        "epochs": args.epochs,
        "limit_batches": args.limit_batches,
        "limit_eval_batches": args.limit_eval_batches,
        "threads": args.threads,
    }
    for rep in range(args.reps):
        for name, overrides in plan:  # alternate, so machine noise hits every contender alike
            kind = "article" if name == "article" else "mnist_lab"
            # Repetition r runs seed + r for every contender: the same seeds side by side, and
            # the accuracies are a mean over seeds rather than one seed's draw repeated.
            r = spawn(kind, args.seed + rep, overrides, **run)
            results[name].append(r)
            print(
                f"rep {rep + 1} {name:<40} median epoch {statistics.median(r['epoch_seconds']):6.2f} s  "
                f"test acc {r['test_acc']:.4f}",
                flush=True,
            )
        for dtype, rates in mm.items():
            rates.append(matmul_gflops(dtype))
    matmul = {dtype: statistics.median(rates) for dtype, rates in mm.items()}
    summary = [summarise(name, runs, matmul) for name, runs in results.items()]
    base, base_rate = summary[0]["median_epoch_s"], summary[0]["images_per_s"]
    # ratio: of the median epoch times (the headline figure of docs/performance.md); per
    # image: of the seconds per training image, since mnist_lab's epoch is 55k images (5k
    # held out for validation) where the article's loop trains on all 60k.
    from mnist_lab.records import machine_record

    machine = machine_record()
    print(f"\nmachine: {machine}")
    print("matmul 2048x2048: " + ", ".join(f"{dtype} {rate:.1f} GFLOP/s" for dtype, rate in matmul.items()))
    print(
        f"{'':<40} {'epoch s':>8} {'img/s':>8} {'GFLOP/s':>8} {'of mm':>6} {'peak MiB':>9} {'ratio':>6} {'per img':>7}"
        "  test acc mean (per rep)"
    )
    for s in summary:
        s["ratio_vs_article"] = s["median_epoch_s"] / base
        s["per_image_ratio_vs_article"] = base_rate / s["images_per_s"]
        s["mean_test_acc"] = statistics.mean(s["test_acc"])
        accs = f"{s['mean_test_acc']:.4f} (" + " ".join(f"{a:.4f}" for a in s["test_acc"]) + ")"
        print(
            f"{s['name']:<40} {s['median_epoch_s']:8.2f} {s['images_per_s']:8.0f} {s['gflops']:8.1f} "
            f"{s['fraction_of_matmul']:6.2f} {s['peak_rss_mib']:9.0f} "
            f"{s['ratio_vs_article']:6.3f} {s['per_image_ratio_vs_article']:7.3f}  {accs}"
        )
    figures = {"matmul_gflops": matmul, "summary": summary}
    write_record(
        args.record, "benchmarks.compare_article", args.results_dir, machine, figures, args=vars(args), runs=results
    )


if __name__ == "__main__":
    main()
