"""`mnist-lab finetune_table DIR... [--figure PNG] [--zero-shot] [--record JSON]`: a transfer study's tables and figure.

One table per target dataset (the `data` choice of the jobs): one row per strategy (runs
without finetune.checkpoint count as `scratch`), one column per labels_per_class (0: only
semi-supervised strategies, which also train on the unlabelled rest); each cell
is the mean ± sample standard deviation of test accuracy over the seeds, the mean training
seconds and the number of runs, the best mean of each column in bold. `--zero-shot` adds the
row of the starting weights evaluated on each target's test split as they are (inference
only: the domain-shift baseline). `--figure` writes test accuracy against labels per class,
one line per strategy, one panel per target. Semi-supervised strategies get a summary beside
the supervised ones: the share of the gap between the best supervised mean and the best
all-labels mean that they close, and the supervised strategies they trail by more than those
strategies' seed spread. Failed or unfinished jobs are listed; the exit status is 1 when
there are any. `--record` writes the rows behind the tables, with the commits and machines
of each sweep's jobs, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import OmegaConf

from mnist_lab import sweepdir
from mnist_lab.errors import user_errors
from mnist_lab.files import write_json
from mnist_lab.semisupervised import FixMatch
from mnist_lab.weights import load_file

ZERO_SHOT = "zero-shot"


def read_jobs(sweep_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """Every job under the sweep directories: target, strategy, labels per class, seed, metrics."""
    jobs, problems = [], []
    for sweep in sweep_dirs:
        for job in sweepdir.jobs(sweep):
            cfg, choices = job.config(), job.choices()
            strategy = choices.finetune if cfg.finetune.checkpoint else "scratch"
            target = get_object(cfg.finetune._target_) if "_target_" in cfg.finetune else None
            labels = "all" if cfg.data.labels_per_class is None else int(cfg.data.labels_per_class)
            if not job.metrics:  # failed, or not finished
                error = job.message or "no metrics.json"
                problems.append(f"{job.dir}: {strategy}, labels_per_class={cfg.data.labels_per_class}: {error}")
                continue
            jobs.append(
                {
                    "job": job.dir,
                    "target": choices.get("data", "data"),
                    "strategy": strategy,
                    "labels": labels,
                    "seed": cfg.seed,
                    "acc": job.metrics["test/acc"],
                    "seconds": job.metrics["train_seconds"],
                    "unfreezes": _plateau_events(job.dir),
                    "semi": isinstance(target, type) and issubclass(target, FixMatch),
                }
            )
    return jobs, problems


def _plateau_events(job: Path) -> dict[int, str]:
    """The plateau-driven unfreezes recorded in the job's last checkpoint ({} when none fired)."""
    last = job / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return {}
    state = load_file(last, "checkpoint").get("finetune") or {}
    return {int(e): g for e, g in state.get("plateau_events", {}).items()}


def zero_shot(jobs: list[dict]) -> list[dict]:
    """One row per target: the starting weights of its fine-tuned jobs on its test split, as they are."""
    from hydra.utils import instantiate

    from mnist_lab.checkpoints import load_net
    from mnist_lab.inference.predictor import probabilities
    from mnist_lab.pretrained import BUNDLED, bundled_for

    rows = []
    for target in sorted({j["target"] for j in jobs}):
        tuned = next((j for j in jobs if j["target"] == target and j["strategy"] != "scratch"), None)
        if tuned is None:
            continue
        saved = OmegaConf.load(tuned["job"] / ".hydra" / "config.yaml")
        start = saved.finetune.checkpoint
        if start == BUNDLED:  # the file that run resolved to (mnist_lab/pretrained.py)
            found = bundled_for(saved.model)
            start = found[0] if found is not None else start
        net, _ = load_net(start)
        data = OmegaConf.create(OmegaConf.to_container(saved.data, resolve=True))
        datamodule = instantiate(data)
        datamodule.setup("test")
        x, y = datamodule.splits.test_x, datamodule.splits.test_y
        acc = float((probabilities(net, x, datamodule.mean, datamodule.std, 1000).argmax(1) == y).float().mean())
        columns = {j["labels"] for j in jobs if j["target"] == target}
        rows += [{"target": target, "strategy": ZERO_SHOT, "labels": c, "acc": acc, "seconds": 0.0} for c in columns]
    return rows


def _columns(jobs: list[dict]) -> list[Any]:
    return sorted({j["labels"] for j in jobs}, key=lambda v: (v == "all", v if v != "all" else 0))


def table(jobs: list[dict]) -> str:
    """Markdown, one table per target: strategies (best mean accuracy first) x labels per class."""
    sections = []
    for target in sorted({j["target"] for j in jobs}):
        mine = [j for j in jobs if j["target"] == target]
        cells: dict[tuple[str, Any], list[dict]] = defaultdict(list)
        for j in mine:
            cells[j["strategy"], j["labels"]].append(j)
        columns = _columns(mine)
        strategies = sorted({j["strategy"] for j in mine})
        mean_acc = {s: statistics.mean(j["acc"] for j in mine if j["strategy"] == s) for s in strategies}
        strategies.sort(key=lambda s: -mean_acc[s])
        best = {
            c: max(statistics.mean(r["acc"] for r in cells[s, c]) for s in strategies if cells[s, c]) for c in columns
        }
        head = "| strategy | " + " | ".join(f"{c} labels/class: test acc % (train s)" for c in columns) + " |"
        lines = [f"### {target}", "", head, "|---|" + "---|" * len(columns)]
        for s in strategies:
            row = []
            for c in columns:
                runs = cells.get((s, c), [])
                if not runs:
                    row.append("-")
                    continue
                accs = [100 * r["acc"] for r in runs]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                mean = f"{statistics.mean(accs):.1f} ± {sd:.1f}"
                if statistics.mean(r["acc"] for r in runs) == best[c] and s != ZERO_SHOT:
                    mean = f"**{mean}**"
                row.append(f"{mean} ({statistics.mean(r['seconds'] for r in runs):.1f}) n={len(runs)}")
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def plateau_report(jobs: list[dict]) -> str:
    """When the plateau rule unfroze groups: per target and labels, the runs it fired in and their events."""
    lines = []
    for j in sorted(
        (j for j in jobs if j["strategy"] == "unfreeze_on_plateau"),
        key=lambda j: (j["target"], str(j["labels"]), j["seed"]),
    ):
        events = ", ".join(f"{g} at epoch {e}" for e, g in sorted(j["unfreezes"].items())) or "never fired"
        lines.append(f"- {j['target']}, {j['labels']} labels/class, seed {j['seed']}: {events}")
    return "unfreeze_on_plateau events:\n" + "\n".join(lines) if lines else ""


def semi_supervised_report(rows: list[dict]) -> str:
    """Per target, semi-supervised strategy and labels per class: the gap to all labels it closes, whom it trails."""
    lines = []

    def stats(target: str, strategy: str, labels: Any) -> tuple[float, float] | None:
        accs = [100 * r["acc"] for r in rows if (r["target"], r["strategy"], r["labels"]) == (target, strategy, labels)]
        return (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0) if accs else None

    for semi in sorted({r["strategy"] for r in rows if r.get("semi")}):
        for target in sorted({r["target"] for r in rows if r["strategy"] == semi}):
            supervised = sorted(
                {
                    r["strategy"]
                    for r in rows
                    if r["target"] == target and not r.get("semi") and r["strategy"] != ZERO_SHOT
                }
            )
            every = [m for s in supervised if (m := stats(target, s, "all"))]
            ceiling = max((m[0] for m in every), default=None)
            for labels in sorted({r["labels"] for r in rows if r["strategy"] == semi and r["target"] == target}):
                ours = stats(target, semi, labels)
                assert ours is not None
                parts = [f"- {target}, {semi}, {labels} labels/class: {ours[0]:.1f} ± {ours[1]:.1f}"]
                zero = stats(target, ZERO_SHOT, labels)
                if zero:
                    parts.append(f"zero-shot {zero[0]:.1f} ({ours[0] - zero[0]:+.1f})")
                means = {s: m for s in supervised if (m := stats(target, s, labels))}
                if means and ceiling is not None:
                    best = max(means, key=lambda s: means[s][0])
                    gap = ceiling - means[best][0]
                    closed = f"closes {100 * (ours[0] - means[best][0]) / gap:.0f}% of the gap" if gap > 0 else "no gap"
                    parts.append(f"best supervised {best} {means[best][0]:.1f}, all labels {ceiling:.1f}: {closed}")
                    trails = [f"{s} {m[0]:.1f} ± {m[1]:.1f}" for s, m in means.items() if ours[0] < m[0] - m[1]]
                    parts.append(f"trails by more than their spread: {', '.join(trails) or 'none'}")
                lines.append("; ".join(parts))
    return "semi-supervised strategies:\n" + "\n".join(lines) if lines else ""


def figure(jobs: list[dict], path: Path) -> None:
    """Test accuracy against labels per class: one line per strategy (mean ± std), one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({j["target"] for j in jobs})
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False, sharey=False)
    for ax, target in zip(axes[0], targets):
        mine = [j for j in jobs if j["target"] == target]
        columns = _columns(mine)
        for s in sorted({j["strategy"] for j in mine}):
            means, sds = [], []
            for c in columns:
                accs = [100 * j["acc"] for j in mine if j["strategy"] == s and j["labels"] == c]
                means.append(statistics.mean(accs) if accs else float("nan"))
                sds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
            style = {"linestyle": "--", "color": "black"} if s == ZERO_SHOT else {"marker": "o"}
            ax.errorbar(range(len(columns)), means, yerr=sds, label=s, capsize=3, **style)
        ax.set(
            title=target, xticks=range(len(columns)), xticklabels=[str(c) for c in columns], xlabel="labels per class"
        )
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy %")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record(rows: list[dict], sweep_dirs: list[Path], argv: list[str]) -> dict[str, Any]:
    """The tables' data: every row, and per sweep the commits and machines its jobs ran on (environment.json)."""
    sweeps = {}
    for sweep in sweep_dirs:
        envs = [json.loads(e.read_text()) for e in sorted(sweep.glob("*/environment.json"))]
        sweeps[str(sweep)] = {
            "git_commits": sorted({str(e.get("git_commit")) for e in envs}),
            "machines": sorted(
                {f"{e.get('cpu')}, family {e.get('cpu_family')} model {e.get('cpu_model_number')}" for e in envs}
            ),
            "torch": sorted({str(e.get("torch")) for e in envs}),
            "started": _started(sweep),
        }
    keep = ("target", "strategy", "labels", "seed", "acc", "seconds")
    return {
        "command": "mnist-lab finetune_table " + " ".join(argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sweeps": sweeps,
        "rows": [{k: r.get(k) for k in keep} for r in rows],
    }


def _started(sweep: Path) -> str | None:
    """When the sweep's first job started (its multirun.yaml's time), as an ISO date."""
    found = sweep / "multirun.yaml"
    return (
        datetime.fromtimestamp(found.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        if found.is_file()
        else None
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-lab finetune_table", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun directories of the study")
    parser.add_argument("--figure", type=Path, default=None, help="also write the figure here (PNG)")
    parser.add_argument("--zero-shot", action="store_true", help="add the starting weights' own accuracy")
    parser.add_argument(
        "--record", type=Path, default=None, help="also write every row, the commits and machines (JSON)"
    )
    args = parser.parse_args(argv)
    with user_errors():  # a checkpoint that cannot be read: one paragraph
        jobs, problems = read_jobs(args.sweep_dirs)
    if not jobs:
        print(f"No finished jobs under {', '.join(map(str, args.sweep_dirs))}.", file=sys.stderr)
        return 1
    with user_errors():
        rows = jobs + (zero_shot(jobs) if args.zero_shot else [])
    print(table(rows))
    for report in (plateau_report(jobs), semi_supervised_report(rows)):
        if report:
            print("\n" + report)
    if args.figure is not None:
        figure(rows, args.figure)
        print(f"\nfigure: {args.figure}")
    if args.record is not None:
        write_json(args.record, record(rows, args.sweep_dirs, argv if argv is not None else sys.argv[1:]))
        print(f"record: {args.record}")
    for p in problems:
        print(f"not finished: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
