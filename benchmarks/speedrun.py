"""The speed-run record against the reference article's loop, side by side in one command.

    python -m benchmarks.speedrun                           # 10 seeds of experiment=speedrun, 3 article epochs
    python -m benchmarks.speedrun --preset speedrun_bf16    # another preset (several --preset: each in turn)
    python -m benchmarks.speedrun --preset "speedrun_bf16 trainer.precision=32-true"   # a preset with overrides
    python -m benchmarks.speedrun --seeds 1 --article-reps 1 --limit-batches 5 --limit-eval-batches 2 --results-dir /tmp/smoke

The question it answers: how long does mnist_lab take to reach 99.0% MNIST test accuracy,
as a fraction of one epoch of the article's hand-written loop on the same machine? It runs,
in fresh subprocesses, one training epoch of the article's loop (benchmarks.compare_article's
`run_article`: torchvision MNIST + PIL transforms + DataLoader, its CNN, SGD) `--article-reps`
times, spread evenly between the speed runs: `experiment=<preset> seed=s` for each of
`--seeds` seeds, each a whole `train(cfg)` (its fit: setup, the training epoch, any
validation). A preset's time is its `train_seconds` (the fit's wall clock), median over the
seeds; the test of the final weights is shown apart. The article's time is the median of
its epochs' training batches (the loop's test is not counted either).

Prints each seed, then per preset: the median seconds, their ratio to the article's epoch,
the mean ± std and the lowest test accuracy over the seeds, and whether the record's
targets hold (mean >= 99.0%, lowest >= 98.9%, ratio <= 0.25); and the machine. The run's
record goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.common import RESULTS_DIR, write_record
from benchmarks.compare_article import spawn

TARGET_MEAN, TARGET_LOWEST, TARGET_RATIO = 0.990, 0.989, 0.25


def plan(presets: list[str], seeds: int, article_reps: int) -> list[tuple[str, int]]:
    """(contender, seed) in run order: each preset's seeds in turn, the article's epochs spread among them."""
    runs = [(p, s) for s in range(seeds) for p in presets]
    # The article's repetition r goes before the run at index r * len / reps, so the loaded and
    # the quiet stretches of a shared machine fall on both sides.
    order: list[tuple[str, int]] = []
    slots = {round(r * len(runs) / article_reps): r for r in range(article_reps)}
    for i, run in enumerate(runs):
        if i in slots:
            order.append(("article", slots[i]))
        order.append(run)
    return order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", action="append", default=None, help="experiment name, then any overrides (default: speedrun)"
    )
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 of each preset")
    p.add_argument("--article-reps", type=int, default=3, help="one-epoch runs of the article's loop")
    p.add_argument("--limit-batches", type=int, default=None, help="train only this many batches (smoke runs)")
    p.add_argument(
        "--limit-eval-batches", type=int, default=None, help="validate and test only this many batches (smoke runs)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--record", default="speedrun", help="the record's name (a run replaces its machine's)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the record goes")
    args = p.parse_args()
    presets = args.preset or ["speedrun"]
    # One epoch: the article's loop, and trainer.max_epochs of each preset (the speed runs' own;
    # an override in --preset comes later and wins).
    run = {
        "epochs": 1,
        "limit_batches": args.limit_batches,
        "limit_eval_batches": args.limit_eval_batches,
        "threads": args.threads,
    }

    results: dict[str, list[dict]] = {name: [] for name in ["article", *presets]}
    for name, seed in plan(presets, args.seeds, args.article_reps):
        if name == "article":
            r = spawn("article", seed, **run)
            print(f"article loop, rep {seed + 1}: epoch {r['epoch_seconds'][0]:.2f} s", flush=True)
        else:
            preset, *overrides = name.split()
            r = spawn("mnist_lab", seed, [f"experiment={preset}", *overrides], **run)
            print(
                f"{name} seed {seed}: train {r['train_seconds']:.2f} s (test {r['test_seconds']:.2f} s)  "
                f"test acc {r['test_acc']:.4f}",
                flush=True,
            )
        results[name].append(r)

    from mnist_lab.records import machine_record

    machine = machine_record()
    article = statistics.median(s for r in results["article"] for s in r["epoch_seconds"])
    print(f"\nmachine: {machine}")
    print(f"article loop: median epoch {article:.2f} s over {len(results['article'])} epochs")
    print(
        f"{'preset':<40} {'train s':>8} {'test s':>7} {'ratio':>6}  {'test acc mean ± std':>20} {'lowest':>7}  targets"
    )
    summary = []
    for name in presets:
        runs = results[name]
        accs = [r["test_acc"] for r in runs]
        row = {
            "preset": name,
            "median_train_s": statistics.median(r["train_seconds"] for r in runs),
            "median_test_s": statistics.median(r["test_seconds"] for r in runs),
            "mean_test_acc": statistics.mean(accs),
            "std_test_acc": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "lowest_test_acc": min(accs),
            "test_acc": accs,
        }
        row["ratio_vs_article_epoch"] = row["median_train_s"] / article
        row["targets_met"] = (
            row["mean_test_acc"] >= TARGET_MEAN
            and row["lowest_test_acc"] >= TARGET_LOWEST
            and row["ratio_vs_article_epoch"] <= TARGET_RATIO
        )
        summary.append(row)
        print(
            f"{name:<40} {row['median_train_s']:8.2f} {row['median_test_s']:7.2f} {row['ratio_vs_article_epoch']:6.3f}  "
            f"{100 * row['mean_test_acc']:13.2f} ± {100 * row['std_test_acc']:.2f}% {100 * row['lowest_test_acc']:6.2f}%  "
            f"{'met' if row['targets_met'] else 'not met'} (mean >= {100 * TARGET_MEAN:.1f}%, lowest >= "
            f"{100 * TARGET_LOWEST:.1f}%, ratio <= {TARGET_RATIO})"
        )
    figures = {"article_epoch_s": article, "summary": summary}
    write_record(args.record, "benchmarks.speedrun", args.results_dir, machine, figures, args=vars(args), runs=results)


if __name__ == "__main__":
    main()
