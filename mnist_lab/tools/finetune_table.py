"""`python -m mnist_lab finetune_table DIR...`: a transfer study's table from its multirun directories.

One row per strategy (runs without finetune.checkpoint count as `scratch`), one column per
labels_per_class; each cell is the mean +- standard deviation of test accuracy over the
seeds, and the mean training time. Prints Markdown; failed or unfinished jobs are listed.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf


def read_jobs(sweep_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """Every job under the sweep directories: its strategy, labels per class, seed and metrics."""
    jobs, problems = [], []
    for sweep in sweep_dirs:
        for job in sorted(p.parent.parent for p in sweep.glob("*/.hydra/config.yaml")):
            cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
            choices = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices
            strategy = choices.finetune if cfg.finetune.checkpoint else "scratch"
            if not (job / "metrics.json").exists():
                error = (
                    (job / "error.txt").read_text().split("\n")[0]
                    if (job / "error.txt").exists()
                    else "no metrics.json"
                )
                problems.append(f"{job}: {strategy}, labels_per_class={cfg.data.labels_per_class}: {error}")
                continue
            metrics = json.loads((job / "metrics.json").read_text())
            jobs.append(
                {
                    "strategy": strategy,
                    "labels": "all" if cfg.data.labels_per_class is None else int(cfg.data.labels_per_class),
                    "seed": cfg.seed,
                    "acc": metrics["test/acc"],
                    "seconds": metrics["train_seconds"],
                }
            )
    return jobs, problems


def table(jobs: list[dict]) -> str:
    """Markdown: strategies (best mean accuracy over all columns first) x labels per class."""
    cells = defaultdict(list)
    for j in jobs:
        cells[j["strategy"], j["labels"]].append(j)
    columns = sorted({j["labels"] for j in jobs}, key=lambda v: (v == "all", v if v != "all" else 0))
    strategies = sorted({j["strategy"] for j in jobs})
    mean_acc = {s: statistics.mean(j["acc"] for j in jobs if j["strategy"] == s) for s in strategies}
    strategies.sort(key=lambda s: -mean_acc[s])
    head = "| strategy | " + " | ".join(f"{c} labels/class: test acc % (train s)" for c in columns) + " |"
    lines = [head, "|---|" + "---|" * len(columns)]
    for s in strategies:
        row = []
        for c in columns:
            runs = cells.get((s, c), [])
            if not runs:
                row.append("-")
                continue
            accs = [100 * r["acc"] for r in runs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row.append(
                f"{statistics.mean(accs):.1f} ± {sd:.1f} ({statistics.mean(r['seconds'] for r in runs):.1f}) n={len(runs)}"
            )
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    jobs, problems = read_jobs([Path(a) for a in argv])
    if not jobs:
        print(f"No finished jobs under {', '.join(argv)}.", file=sys.stderr)
        return 1
    print(table(jobs))
    for p in problems:
        print(f"not finished: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
