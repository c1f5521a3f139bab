"""mnist_lab's `train(cfg)` against a hand-optimised plain PyTorch loop doing the same arithmetic, per epoch or per step.

    python -m benchmarks.parity                                  # per epoch: 3 alternating repetitions, 3 epochs, fp32 and bf16
    python -m benchmarks.parity --device cuda --reps 3 --epochs 2       # per epoch on a GPU
    python -m benchmarks.parity --per step                       # per step: 3 repetitions, 400 steps, CNN and tiny MLP
    python -m benchmarks.parity --per step --reps 1 --steps 30 --models tiny --precision 32-true --results-dir /tmp/smoke

Both modes train `experiment=seed_baseline` with the same seed: the DigitsDataModule's uint8
tensors, the same TensorBatches order, normalised per batch (mnist_lab.data.pixels), the
same network in channels_last, the same SGD, in the same precision (bf16-mixed: the plain
loop runs its forward and loss under torch.autocast("cpu", bfloat16), as Lightning does).
The plain loop keeps only what a careful hand-written loop needs: the loss summed on the
device and read every 200 batches, no validation, no logging, no checkpoints. mnist_lab runs
the path of benchmarks.compare_article (validation every epoch, TensorBoard, checkpoints,
test of the best checkpoint), pinned to the CPU (compare_article.device_overrides) unless
`--device cuda`. Each run writes its record to benchmarks/results/ (`parity-epoch` or
`parity-step`, per machine class).

**--per epoch** (the default): each repetition runs both sides in fresh subprocesses, in
alternating order; mnist_lab's `epoch_seconds` excludes validation, and the plain loop times
only its training batches. Each repetition also times a 2048x2048 matmul in each precision
(the roofline: `of mm` is a side's GFLOP/s over that rate). A smoke run keeps the matmul
small (`--matmul-size`) and tests (and validates) on `--limit-eval-batches` batches: on a CPU
without native bf16 the bf16 half is emulated, which makes a 2048x2048 bf16 matmul take
minutes. Prints per precision each side's median epoch, images/s, GFLOP/s, and mnist_lab's
overhead in percent of the plain loop's epoch, per repetition too. `--device cuda` trains
both sides on the GPU, every image in its memory (the plain loop's batches index tensors
there; mnist_lab runs `trainer=gpu data.on_device=true`), timing epochs after a
synchronisation, against a matmul on the GPU.

**--per step**: single steps, so a fixed cost per step shows even where it is a few percent
of an epoch and the epochs drift by more. Four sides train `--steps` batches of one epoch on
the same uint8 batches, network, optimizer and precision:

- plain: the hand-written loop (`run_plain`);
- lightning: the least Lightning needs for the same arithmetic, a LightningModule with a
  training_step, configure_optimizers and the per-batch normalisation, in a Trainer with no
  logger, no checkpointing, no progress bar, no validation (`BareModule`): Lightning's own loop;
- manual: the same module under Lightning's manual optimisation (`ManualModule`: zero_grad,
  manual_backward and the optimizer step in its training_step), which leaves out the
  automatic loop's closure and its optimizer hooks: what a Classifier on manual optimisation
  would still pay;
- mnist_lab: `train(cfg)` as the per-epoch mode runs it (its callbacks, TensorBoard, checkpoints).

Models: `cnn` is the article's CNN; `tiny` is model=mlp with two hidden layers of 16 (13k
parameters), a step with almost no arithmetic, so what is left is the loop's fixed cost.

A step is the interval from one step's start to the next's, so on every side it holds fetching
the batch, normalising it, forward, backward and the optimizer step; the first `--warmup` are
left out and each block of steps gives its median. The plain loop and the bare modules also mark the
start and end of the forward, the backward and the optimizer step (MARKS), and the step
is split into those three and the rest. mnist_lab's side is timed by a `StepClock` callback (its
batch start and end hooks) and gives, besides its step, the median "between": from a batch's end
hook to the next batch's start hook (Lightning's data fetch, the batch-transfer hooks, the
loop's bookkeeping). Each model and precision runs in one fresh process that repeats the four
sides `--reps` times in rotating order; each overhead is a difference of the sides' medians,
in ms and in percent of the plain step, per repetition too: lightning - plain is Lightning's
share, manual - plain that share under manual optimisation, mnist_lab - lightning what
mnist_lab adds to Lightning's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from benchmarks.common import (
    RESULTS_DIR,
    emit,
    matmul_dtype,
    matmul_gflops,
    run_worker,
    synchronize,
    train_flops_per_image,
    write_record,
)
from benchmarks.compare_article import run_mnist_lab
from mnist_lab.data.pixels import normalize
from mnist_lab.records import machine_record

MODULE = "benchmarks.parity"

LOG_EVERY = 200  # the trainer's log_every_n_steps: the plain loop reads its loss as often
# mnist_lab's side on each --device: the plain loop's batches are all on the GPU, so its are too.
MNIST_LAB_ON = {"cpu": [], "cuda": ["trainer=gpu", "data.on_device=true"]}
# What run_plain's step_marks record per step (the per-step mode reads them).
MARKS = ("start", "forward", "forward_end", "backward", "backward_end", "step", "step_end")
# Per step: the models (overrides after experiment=seed_baseline) and the four sides.
MODELS = {"cnn": [], "tiny": ["model=mlp", "model.hidden1=16", "model.hidden2=16"]}
SIDES = ("plain", "lightning", "manual", "mnist_lab")
TIMED = ("plain", "lightning", "manual")  # the sides that mark their step's segments
SEGMENTS = ("forward", "backward", "optimizer", "rest")
PRECISIONS = ["32-true", "bf16-mixed"]


# --- per epoch --------------------------------------------------------------------------------


def plain_setup(seed: int, overrides: Sequence[str] = (), device: str = "cpu"):
    """What a hand-written loop takes from mnist_lab: config, uint8 splits, network, optimizer, batches.

    `overrides` go after experiment=seed_baseline (the per-step mode: model=mlp). The
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
    overrides: Sequence[str] = (),
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


def epoch_worker(args: argparse.Namespace) -> None:
    if args.worker == "plain":
        result = run_plain(
            args.epochs,
            args.limit_batches,
            args.seed,
            args.precision[0],
            device=args.device,
            limit_eval_batches=args.limit_eval_batches,
        )
        del result["step_marks"]  # the per-step mode's; thousands of numbers an epoch
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
    args += ["--per", "epoch"]
    return run_worker(MODULE, *args, name=f"{kind} {precision} run")


def run_per_epoch(args: argparse.Namespace) -> None:
    """Both sides, every precision, `args.reps` alternating repetitions in fresh processes; prints and records."""
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
    write_record(
        args.record or "parity-epoch",
        MODULE,
        args.results_dir,
        machine,
        {"summary": summary},
        args=vars(args),
        runs=runs,
    )


# --- per step --------------------------------------------------------------------------------


class StepClock(pl.Callback):
    """Records each training batch's start and end (perf_counter); writes them to `path` when fit ends."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.write_text(json.dumps({"starts": self.starts, "ends": self.ends}))


class BareModule(pl.LightningModule):
    """The plain loop as a LightningModule: the loss, the optimizer, the per-batch normalisation.

    Its hooks record the same marks per step as run_plain (MARKS): the step's
    start (on_train_batch_start), the forward in training_step, the backward (on_before_backward
    to on_after_backward) and the optimizer step (on_before_optimizer_step to on_train_batch_end,
    so it also holds Lightning's return from the step).
    """

    def __init__(self, net, optimizer, batches, mean: float, std: float, memory_format) -> None:
        super().__init__()
        self.net, self.optimizer, self.batches = net, optimizer, batches
        self.mean, self.std, self.memory_format = mean, std, memory_format
        self.marks: list[list[float]] = []

    def _mark(self) -> None:
        self.marks[-1].append(time.perf_counter())

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.marks.append([time.perf_counter()])

    def training_step(self, batch, batch_idx):
        x, y = batch
        self._mark()
        loss = F.cross_entropy(self.net(x), y)
        self._mark()
        return loss

    def on_before_backward(self, loss) -> None:
        self._mark()

    def on_after_backward(self) -> None:
        self._mark()

    def on_before_optimizer_step(self, optimizer) -> None:
        self._mark()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._mark()

    def configure_optimizers(self):
        return self.optimizer

    def train_dataloader(self):
        return self.batches

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return normalize(x, self.mean, self.std).contiguous(memory_format=self.memory_format), y


class ManualModule(BareModule):
    """BareModule under manual optimisation: training_step zeroes the gradients, runs
    manual_backward and steps the optimizer itself, so Lightning runs no closure and no
    optimizer_step / optimizer_zero_grad hooks. The same marks: manual_backward still calls
    on_before_backward and on_after_backward, the optimizer's step on_before_optimizer_step.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        return loss


def segments_ms(marks: list, warmup: int) -> dict[str, float]:
    """Median ms per step of the forward, the backward, the optimizer step, and the rest of the step.

    `marks`: per step the times in MARKS order. The rest is the step (to the next
    step's start) less the three: fetching and normalising the batch, zero_grad, the loop's
    bookkeeping and, in Lightning, its hooks and dispatch.
    """
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "rest": []}
    rows = marks[warmup:]
    for row, following in zip(rows, rows[1:]):
        t = dict(zip(MARKS, row, strict=True))
        timed = {
            "forward": t["forward_end"] - t["forward"],
            "backward": t["backward_end"] - t["backward"],
            "optimizer": t["step_end"] - t["step"],
        }
        for name, seconds in timed.items():
            parts[name].append(seconds)
        parts["rest"].append(following[0] - t["start"] - sum(timed.values()))
    return {name: 1000 * statistics.median(v) for name, v in parts.items()}


def run_bare_lightning(
    steps: int, seed: int, precision: str, overrides: list[str], module_class: type[BareModule] = BareModule
) -> list[list[float]]:
    """`module_class` for `steps` batches in a Trainer with nothing else on; returns its marks."""
    cfg, _, net, optimizer, batches, cl = plain_setup(seed, overrides)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]  # "32-true" or "bf16-mixed" (--precision's choices)
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = module_class(net, optimizer, batches, cfg.data.mean, cfg.data.std, cl)
    trainer.fit(module)
    return module.marks


def median_step_ms(starts: list[float], warmup: int) -> float:
    steps = [b - a for a, b in zip(starts[warmup:], starts[warmup + 1 :])]
    if not steps:
        raise SystemExit(f"--steps must exceed --warmup + 1 ({warmup + 1}): no step left to time")
    return 1000 * statistics.median(steps)


def between_ms(starts: list[float], ends: list[float], warmup: int) -> float:
    """Median time from each batch's end hook to the next batch's start hook."""
    return 1000 * statistics.median(s - e for e, s in zip(ends[warmup:], starts[warmup + 1 :]))


def run_side(side: str, model: str, precision: str, steps: int, seed: int, warmup: int) -> dict:
    """One block of `steps` training steps of `side`: its median step, and its segments (plain,
    lightning, manual) or its median time between steps (mnist_lab, which records only the batch hooks)."""
    overrides = MODELS[model]
    if side == "mnist_lab":
        path = Path(tempfile.mkdtemp()) / "clock.json"  # in the worker's TMPDIR, removed with it
        overrides = [
            *overrides,
            f"trainer.precision={precision}",
            "+callbacks.step_clock._target_=benchmarks.parity.StepClock",
            f"+callbacks.step_clock.path={path}",
        ]
        run_mnist_lab(1, steps, seed, overrides)
        times = json.loads(path.read_text())
        return {
            "step_ms": median_step_ms(times["starts"], warmup),
            "between_ms": between_ms(times["starts"], times["ends"], warmup),
        }
    if side == "plain":
        marks = run_plain(1, steps, seed, precision, overrides)["step_marks"]
    else:
        module_class = ManualModule if side == "manual" else BareModule
        marks = run_bare_lightning(steps, seed, precision, overrides, module_class)
    return {"step_ms": median_step_ms([m[0] for m in marks], warmup), "segments_ms": segments_ms(marks, warmup)}


def step_worker(args: argparse.Namespace) -> None:
    """All repetitions of one model and precision in this one process, the sides rotating their order.

    In one process, because on a shared machine the same side's median step moves more from
    one fresh process to the next than the sides differ; every block
    starts from the same seeded weights, so each does the same work.
    """
    blocks: dict[str, list[dict]] = {side: [] for side in SIDES}
    for rep in range(args.reps):
        for side in SIDES[rep % len(SIDES) :] + SIDES[: rep % len(SIDES)]:
            r = run_side(side, args.model, args.precision, args.steps, args.seed, args.warmup)
            blocks[side].append({"rep": rep + 1, **r})
    emit(blocks)


def run_per_step(args: argparse.Namespace) -> None:
    """The four sides per model and precision, each case in one process; prints and records."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for model in args.models:
        for precision in args.precision:
            print(f"{model} {precision}: {args.reps} repetitions of the four sides in one process", flush=True)
            runs[f"{model} {precision}"] = run_worker(
                MODULE,
                *("--per", "step", "--worker", "steps", "--model", model, "--precision", precision),
                *("--steps", args.steps),
                *("--reps", args.reps, "--warmup", args.warmup, "--seed", args.seed),
                name=f"{model} {precision} run",
            )
            for side in SIDES:
                for r in runs[f"{model} {precision}"][side]:
                    between = f"  between steps {r['between_ms']:.3f} ms" if "between_ms" in r else ""
                    print(f"  rep {r['rep']} {side:<9} step {r['step_ms']:7.3f} ms{between}", flush=True)

    machine = machine_record()
    print(f"\nmachine: {machine}")
    print(
        f"median step in ms over {args.reps} repetitions of {args.steps} steps (the first {args.warmup} left out); "
        "overheads: ms and % of the plain step (per repetition, ms)"
    )
    print(
        f"{'case':<16} {'plain':>7} {'lightning':>9} {'manual':>7} {'mnist_lab':>9} {'between':>8}  "
        f"{'lightning - plain':<34} {'manual - plain':<34} {'mnist_lab - lightning':<34} {'mnist_lab - plain'}"
    )
    summary = {}
    for case, sides in runs.items():
        step = {side: [r["step_ms"] for r in sides[side]] for side in SIDES}
        row: dict = {f"{side}_step_ms": statistics.median(v) for side, v in step.items()}
        row["mnist_lab_between_ms"] = statistics.median(r["between_ms"] for r in sides["mnist_lab"])
        cells = []
        for name, a, b in (
            ("lightning", "plain", "lightning"),
            ("manual", "plain", "manual"),
            ("mnist_lab_added", "lightning", "mnist_lab"),
            ("mnist_lab", "plain", "mnist_lab"),
        ):
            ms = row[f"{b}_step_ms"] - row[f"{a}_step_ms"]
            per_rep = [y - x for x, y in zip(step[a], step[b])]
            row[f"{name}_overhead_ms"], row[f"{name}_overhead_ms_per_rep"] = ms, per_rep
            row[f"{name}_overhead_pct"] = 100 * ms / row["plain_step_ms"]
            cells.append(
                f"{ms:+.3f} {row[f'{name}_overhead_pct']:+5.1f}% (" + " ".join(f"{v:+.3f}" for v in per_rep) + ")"
            )
        summary[case] = row
        print(
            f"{case:<16} {row['plain_step_ms']:7.3f} {row['lightning_step_ms']:9.3f} {row['manual_step_ms']:7.3f} "
            f"{row['mnist_lab_step_ms']:9.3f} "
            f"{row['mnist_lab_between_ms']:8.3f}  " + " ".join(f"{c:<34}" for c in cells)
        )
    print("\nwhere the step goes, median ms per step (rest: data, zero_grad, loop, hooks; see the module docstring)")
    print(f"{'case':<16} {'side':<9} {'forward':>8} {'backward':>9} {'optimizer':>10} {'rest':>7}")
    for case, sides in runs.items():
        summary[case]["segments_ms"] = {}
        for side in TIMED:
            seg = {n: statistics.median(r["segments_ms"][n] for r in sides[side]) for n in SEGMENTS}
            summary[case]["segments_ms"][side] = seg
            print(f"{case:<16} {side:<9} " + " ".join(f"{seg[n]:{w}.3f}" for n, w in zip(SEGMENTS, (8, 9, 10, 7))))
    write_record(
        args.record or "parity-step",
        MODULE,
        args.results_dir,
        machine,
        {"summary": summary},
        args=vars(args),
        runs=runs,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per", choices=["epoch", "step"], default="epoch", help="compare whole epochs or single steps")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--precision", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the first repetition (per epoch: repetition r: seed + r)"
    )
    p.add_argument(
        "--record", default=None, help="the record's name (default: parity-<per>; a run replaces its machine's)"
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the record goes")
    epoch = p.add_argument_group("--per epoch")
    epoch.add_argument("--epochs", type=int, default=3)
    epoch.add_argument("--limit-batches", type=int, default=None, help="train only this many batches per epoch")
    epoch.add_argument(
        "--limit-eval-batches", type=int, default=None, help="validate and test only this many batches (smoke runs)"
    )
    epoch.add_argument(
        "--matmul-size", type=int, default=2048, help="n of the roofline's n x n matmul (smoke runs: 256)"
    )
    epoch.add_argument("--device", choices=list(MNIST_LAB_ON), default="cpu", help="both sides train here")
    step = p.add_argument_group("--per step")
    step.add_argument("--steps", type=int, default=400, help="training steps per run (one epoch, limit_train_batches)")
    step.add_argument("--warmup", type=int, default=20, help="first steps of each run left out of its median")
    step.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--worker", choices=["plain", "mnist_lab", "steps"], help=argparse.SUPPRESS)
    p.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "steps":
        args.precision = args.precision[0]
        return step_worker(args)
    if args.worker:
        return epoch_worker(args)
    if args.device == "cuda" and args.per == "step":
        p.error("--device cuda: the per-step comparison runs on the CPU only; use --per epoch --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False); use --device cpu")
    if args.per == "step" and args.steps <= args.warmup + 1:
        p.error(f"--steps {args.steps} must exceed --warmup + 1 ({args.warmup + 1}): no step would be timed")
    run_per_step(args) if args.per == "step" else run_per_epoch(args)


if __name__ == "__main__":
    main()
