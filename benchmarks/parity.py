"""mnist_lab's `train(cfg)` against a hand-optimised plain PyTorch loop doing the same arithmetic.

    python benchmarks/parity.py                                  # 3 alternating repetitions, 3 epochs, fp32 and bf16
    python benchmarks/parity.py --reps 1 --epochs 1 --limit-batches 3 --limit-eval-batches 1 --matmul-size 256   # smoke run
    python benchmarks/parity.py --device cuda --reps 3 --epochs 2       # on a GPU

Both sides train `experiment=seed_baseline` with the same seed: the DigitsDataModule's uint8
tensors, the same TensorBatches order, normalised per batch (mnist_lab.data.pixels), the
same CNN in channels_last, the same SGD, in the same precision (bf16-mixed: the plain loop
runs its forward and loss under torch.autocast("cpu", bfloat16), as Lightning does). The
plain loop keeps only what a careful hand-written loop needs: the loss summed on the device
and read every 200 batches, no validation, no logging, no checkpoints. mnist_lab runs the
path of benchmarks/compare_article.py (validation every epoch, TensorBoard, checkpoints,
test of the best checkpoint); its `epoch_seconds` excludes validation, and the plain loop
times only its training batches. Each repetition runs both sides in fresh subprocesses, in
alternating order, and a 2048x2048 matmul in each precision (the roofline: `of mm` is a
side's GFLOP/s over that rate). A smoke run keeps the matmul small (`--matmul-size`) and
tests (and validates) on `--limit-eval-batches` batches: on a CPU without native bf16 the
bf16 half is emulated, which makes a 2048x2048 bf16 matmul take minutes. Prints per precision each side's median epoch, images/s,
GFLOP/s, and mnist_lab's overhead in percent of the plain loop's epoch, per repetition too.

`--device cuda` trains both sides on the GPU, every image in its memory (the plain loop's
batches index tensors there; mnist_lab runs `trainer=gpu data.on_device=true`), timing
epochs after a synchronisation, against a matmul on the GPU. On the CPU (the default)
mnist_lab's side is pinned to the CPU (compare_article.device_overrides) even where a GPU is
present.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# benchmarks/ is the script's directory, so its modules import by name.
from compare_article import run_mnist_lab
from roofline import matmul_dtype, matmul_gflops, synchronize, train_flops_per_image
from workers import emit, run_worker, write_record

LOG_EVERY = 200  # the trainer's log_every_n_steps: the plain loop reads its loss as often
# mnist_lab's side on each --device: the plain loop's batches are all on the GPU, so its are too.
MNIST_LAB_ON = {"cpu": [], "cuda": ["trainer=gpu", "data.on_device=true"]}
# What run_plain's step_marks record per step (benchmarks/step_overhead.py reads them).
MARKS = ("start", "forward", "forward_end", "backward", "backward_end", "step", "step_end")


def plain_setup(seed: int, overrides: list[str] = (), device: str = "cpu"):
    """What a hand-written loop takes from mnist_lab: config, uint8 splits, network, optimizer, batches.

    `overrides` go after experiment=seed_baseline (benchmarks/step_overhead.py: model=mlp). The
    network and the training batches are on `device` (a GPU: all images in its memory, as
    mnist_lab's data.on_device=true).
    Returns (cfg, splits, net, optimizer, train batches, memory format).
    """
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mnist_lab import CONF_DIR
    from mnist_lab.data.batches import TensorBatches
    from mnist_lab.train import setup_data

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=seed_baseline", f"seed={seed}", *overrides])
    data = setup_data(cfg).splits  # the same uint8 splits (55k train / 5k val / 10k test)
    torch.manual_seed(cfg.seed)  # what pl.seed_everything does before mnist_lab builds the net: the same weights
    cl = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = instantiate(cfg.model).to(device, memory_format=cl)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    batches = TensorBatches(train_x, train_y, cfg.data.batch_size, True, cfg.data.seed)  # mnist_lab's epoch order
    return cfg, data, net, optimizer, batches, cl


def run_plain(
    epochs: int,
    limit_batches: int | None,
    seed: int,
    precision: str,
    overrides: list[str] = (),
    device: str = "cpu",
    limit_eval_batches: int | None = None,
) -> dict:
    """The hand-written loop on mnist_lab's data, model and optimizer config; returns timings and test accuracy.

    The test set is read in order; `limit_eval_batches` tests only its first batches, as
    Lightning's limit_test_batches does on mnist_lab's side.

    `step_marks` holds, per training step, the perf_counter times of its start (the intervals
    between starts are whole steps: fetching the batch, normalising it, forward, backward,
    SGD) and of the start and end of its forward, backward and optimizer step (MARKS). On a
    GPU they are the host's times of queueing the work, so only the epochs (synchronised at
    their ends) are timings there.
    """
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from mnist_lab.data.batches import TensorBatches
    from mnist_lab.data.pixels import normalize

    cfg, data, net, optimizer, batches, cl = plain_setup(seed, overrides, device)
    mean, std = cfg.data.mean, cfg.data.std
    bf16 = precision == "bf16-mixed"
    device_type = torch.device(device).type  # autocast's "cpu" or "cuda"

    epoch_seconds, step_marks, images = [], [], 0
    clock = time.perf_counter
    for epoch in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        loss_sum, steps = torch.zeros((), device=device), 0
        for i, (x, y) in enumerate(batches):
            if limit_batches is not None and i >= limit_batches:
                break
            step_start = clock()
            x = normalize(x, mean, std).contiguous(memory_format=cl)  # fp32, as on_after_batch_transfer
            forward = clock()
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y)
            forward_end = clock()
            optimizer.zero_grad(set_to_none=True)
            backward = clock()
            loss.backward()
            backward_end = optimizer_start = clock()
            optimizer.step()
            step_marks.append((step_start, forward, forward_end, backward, backward_end, optimizer_start, clock()))
            loss_sum += loss.detach()
            steps += 1
            images += len(y)
            if steps == LOG_EVERY:  # one host sync per window, as mnist_lab's train/loss
                print(f"[{epoch + 1}, {i + 1:5d}] loss: {loss_sum.item() / steps:.3f}", file=sys.stderr)
                loss_sum.zero_()
                steps = 0
        synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)

    correct = tested = 0
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        for i, (x, y) in enumerate(TensorBatches(test_x, test_y, cfg.data.eval_batch_size, False)):
            if limit_eval_batches is not None and i >= limit_eval_batches:
                break
            correct += (net(normalize(x, mean, std).contiguous(memory_format=cl)).argmax(1) == y).sum().item()
            tested += len(y)
    return {
        "epoch_seconds": epoch_seconds,
        "step_marks": step_marks,
        "images": images,
        "test_acc": correct / tested,
        "precision": precision,
        "train_flops_per_image": train_flops_per_image(instantiate(cfg.model)),
    }


def worker(args: argparse.Namespace) -> None:
    if args.worker == "plain":
        result = run_plain(
            args.epochs,
            args.limit_batches,
            args.seed,
            args.precision[0],
            device=args.device,
            limit_eval_batches=args.limit_eval_batches,
        )
        del result["step_marks"]  # benchmarks/step_overhead.py's; thousands of numbers an epoch
    else:
        overrides = [f"trainer.precision={args.precision[0]}", *MNIST_LAB_ON[args.device]]
        if args.limit_eval_batches:
            n = args.limit_eval_batches
            overrides += [f"trainer.limit_val_batches={n}", f"trainer.limit_test_batches={n}"]
        result = run_mnist_lab(args.epochs, args.limit_batches, args.seed, overrides)
    emit(result)


def spawn(
    kind: str,
    seed: int,
    precision: str,
    *,
    epochs: int,
    limit_batches: int | None,
    limit_eval_batches: int | None,
    device: str,
) -> dict:
    """One run of `kind` ("plain" or "mnist_lab") in `precision` on `device`, in a fresh process."""
    args = ["--worker", kind, "--epochs", epochs, "--seed", seed, "--precision", precision, "--device", device]
    args += ["--limit-batches", limit_batches] if limit_batches else []
    args += ["--limit-eval-batches", limit_eval_batches] if limit_eval_batches else []
    return run_worker(__file__, *args, name=f"{kind} {precision} run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-batches", type=int, default=None, help="train only this many batches per epoch")
    p.add_argument(
        "--limit-eval-batches", type=int, default=None, help="validate and test only this many batches (smoke runs)"
    )
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the roofline's n x n matmul (smoke runs: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first repetition (repetition r: seed + r)")
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--device", choices=list(MNIST_LAB_ON), default="cpu", help="both sides train here")
    p.add_argument("--json", type=Path, default=None, help="also write the summary and every run here")
    p.add_argument("--worker", choices=["plain", "mnist_lab"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False); use --device cpu")

    runs: dict[str, dict[str, list[dict]]] = {pr: {"plain": [], "mnist_lab": []} for pr in args.precision}
    mm: dict[str, list[float]] = {pr: [] for pr in args.precision}
    for rep in range(args.reps):
        for precision in args.precision:
            # Alternate which side runs first, so a slow spell of the shared machine hits both alike.
            for kind in ("plain", "mnist_lab") if rep % 2 == 0 else ("mnist_lab", "plain"):
                r = spawn(
                    kind,
                    args.seed + rep,
                    precision,
                    epochs=args.epochs,
                    limit_batches=args.limit_batches,
                    limit_eval_batches=args.limit_eval_batches,
                    device=args.device,
                )
                runs[precision][kind].append(r)
                print(
                    f"rep {rep + 1} {precision:<10} {kind:<9} median epoch {statistics.median(r['epoch_seconds']):6.2f} s"
                    f"  test acc {r['test_acc']:.4f}",
                    flush=True,
                )
            mm[precision].append(matmul_gflops(matmul_dtype(precision), n=args.matmul_size, device=args.device))

    from mnist_lab.records import machine_record

    machine = machine_record()
    print(f"\nmachine: {machine}")
    summary = {}
    for precision, sides in runs.items():
        rate = statistics.median(mm[precision])
        rows = {}
        for kind, rs in sides.items():
            med = statistics.median(s for r in rs for s in r["epoch_seconds"])
            per_epoch_images = rs[0]["images"] / len(rs[0]["epoch_seconds"])
            gflops = rs[0]["train_flops_per_image"] * per_epoch_images / med / 1e9
            rows[kind] = {
                "median_epoch_s": med,
                "rep_median_epoch_s": [statistics.median(r["epoch_seconds"]) for r in rs],
                "images_per_s": per_epoch_images / med,
                "gflops": gflops,
                "fraction_of_matmul": gflops / rate,
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "test_acc": [r["test_acc"] for r in rs],
            }
        plain, lab = rows["plain"], rows["mnist_lab"]
        overhead = 100 * (lab["median_epoch_s"] / plain["median_epoch_s"] - 1)
        per_rep = [100 * (a / b - 1) for a, b in zip(lab["rep_median_epoch_s"], plain["rep_median_epoch_s"])]
        summary[precision] = {
            "matmul_gflops": rate,
            "matmul_gflops_per_rep": mm[precision],
            "overhead_pct": overhead,
            "overhead_pct_per_rep": per_rep,
            **rows,
        }
        print(
            f"\n{precision}: matmul {args.matmul_size}x{args.matmul_size} {rate:.1f} GFLOP/s (per rep "
            + " ".join(f"{v:.1f}" for v in mm[precision])
            + ")"
        )
        print(
            f"{'':<10} {'epoch s':>8} {'per rep':>20} {'img/s':>7} {'GFLOP/s':>8} {'of mm':>6} {'peak MiB':>9}  test acc"
        )
        for kind, s in rows.items():
            reps = " ".join(f"{v:.2f}" for v in s["rep_median_epoch_s"])
            accs = " ".join(f"{a:.4f}" for a in s["test_acc"])
            print(
                f"{kind:<10} {s['median_epoch_s']:8.2f} {reps:>20} {s['images_per_s']:7.0f} {s['gflops']:8.1f} "
                f"{s['fraction_of_matmul']:6.2f} {s['peak_rss_mib']:9.0f}  {accs}"
            )
        print(
            f"overhead {precision}: {overhead:+.1f}% of the plain loop's epoch "
            f"(per rep "
            + " ".join(f"{v:+.1f}%" for v in per_rep)
            + f"; range {min(per_rep):+.1f}..{max(per_rep):+.1f}%)"
        )
    if len(summary) == 2:
        fp32, bf16 = summary["32-true"], summary["bf16-mixed"]
        print(
            f"\nbf16 / fp32 epoch: plain {bf16['plain']['median_epoch_s'] / fp32['plain']['median_epoch_s']:.3f}, "
            f"mnist_lab {bf16['mnist_lab']['median_epoch_s'] / fp32['mnist_lab']['median_epoch_s']:.3f}; "
            f"matmul rate bf16 / fp32 {bf16['matmul_gflops'] / fp32['matmul_gflops']:.2f}"
        )
    write_record(args.json, args, machine, summary=summary, runs=runs)


if __name__ == "__main__":
    main()
