"""Where parity.py's overhead is: one training step of mnist_lab, of bare Lightning loops, of the plain loop.

    python benchmarks/step_overhead.py                  # 3 repetitions, 400 steps, CNN and tiny MLP, fp32 and bf16
    python benchmarks/step_overhead.py --reps 1 --steps 30 --models tiny --precision 32-true   # smoke run

parity.py compares whole epochs; this compares single steps, so a fixed cost per step shows
even where it is a few percent of an epoch and the epochs drift by more. Four sides train
`--steps` batches of one epoch of experiment=seed_baseline on the same uint8 batches, network,
optimizer and precision:

- plain: parity.py's hand-written loop (`run_plain`);
- lightning: the least Lightning needs for the same arithmetic, a LightningModule with a
  training_step, configure_optimizers and the per-batch normalisation, in a Trainer with no
  logger, no checkpointing, no progress bar, no validation (`BareModule`): Lightning's own loop;
- manual: the same module under Lightning's manual optimisation (`ManualModule`: zero_grad,
  manual_backward and the optimizer step in its training_step), which leaves out the
  automatic loop's closure and its optimizer hooks: what a Classifier on manual optimisation
  would still pay;
- mnist_lab: `train(cfg)` as parity.py runs it (its callbacks, TensorBoard, checkpoints).

Models: `cnn` is the article's CNN; `tiny` is model=mlp with two hidden layers of 16 (13k
parameters), a step with almost no arithmetic, so what is left is the loop's fixed cost.

A step is the interval from one step's start to the next's, so on every side it holds fetching
the batch, normalising it, forward, backward and the optimizer step; the first `--warmup` are
left out and each block of steps gives its median. The plain loop and the bare modules also mark the
start and end of the forward, the backward and the optimizer step (parity.MARKS), and the step
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
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch.nn.functional as F

# benchmarks/ is the script's directory, so its modules import by name.
from compare_article import run_mnist_lab
from parity import MARKS, plain_setup, run_plain
from workers import emit, run_worker, write_record

from mnist_lab.data.pixels import normalize
from mnist_lab.records import machine_record

MODELS = {"cnn": [], "tiny": ["model=mlp", "model.hidden1=16", "model.hidden2=16"]}  # after experiment=seed_baseline
SIDES = ("plain", "lightning", "manual", "mnist_lab")
TIMED = ("plain", "lightning", "manual")  # the sides that mark their step's segments
SEGMENTS = ("forward", "backward", "optimizer", "rest")


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
    """parity.py's plain loop as a LightningModule: the loss, the optimizer, the per-batch normalisation.

    Its hooks record the same marks per step as parity.run_plain (parity.MARKS): the step's
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

    `marks`: per step the times in parity.MARKS order. The rest is the step (to the next
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
        precision=precision,
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
            # step_overhead is importable by name: the worker runs as benchmarks/step_overhead.py.
            "+callbacks.step_clock._target_=step_overhead.StepClock",
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


def worker(args: argparse.Namespace) -> None:
    """All repetitions of one model and precision in this one process, the sides rotating their order.

    In one process, because on a shared machine the same side's median step moves more from
    one fresh process to the next than the sides differ (benchmarks/README.md); every block
    starts from the same seeded weights, so each does the same work.
    """
    blocks: dict[str, list[dict]] = {side: [] for side in SIDES}
    for rep in range(args.reps):
        for side in SIDES[rep % len(SIDES) :] + SIDES[: rep % len(SIDES)]:
            r = run_side(side, args.model, args.precision, args.steps, args.seed, args.warmup)
            blocks[side].append({"rep": rep + 1, **r})
    emit(blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=400, help="training steps per run (one epoch, limit_train_batches)")
    p.add_argument("--warmup", type=int, default=20, help="first steps of each run left out of its median")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the summary and every run here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.precision = args.precision[0]
        return worker(args)
    if args.steps <= args.warmup + 1:
        p.error(f"--steps {args.steps} must exceed --warmup + 1 ({args.warmup + 1}): no step would be timed")

    runs: dict[str, dict[str, list[dict]]] = {}
    for model in args.models:
        for precision in args.precision:
            print(f"{model} {precision}: {args.reps} repetitions of the four sides in one process", flush=True)
            runs[f"{model} {precision}"] = run_worker(
                __file__,
                *("--worker", "--model", model, "--precision", precision, "--steps", args.steps),
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
    write_record(args.json, args, machine, summary=summary, runs=runs)


if __name__ == "__main__":
    main()
