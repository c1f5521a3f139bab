"""`python -m mnist_lab report <multirun dir>`: one table of a sweep's jobs, best first.

The jobs are read by mnist_lab.sweepdir (finished, pruned, failed or incomplete). The table
shows the overrides that differ between jobs against the final metrics; it is printed and
written as `report.md` and `report.csv` into the multirun directory. A multirun ends by
printing it (SweepReport, conf/hydra/default.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_lab import sweepdir
from mnist_lab.errors import UserError, failure_message, user_errors
from mnist_lab.files import write_atomic

METRICS = ("test/acc", "val/acc_best", "test/loss", "epochs", "train_seconds", "test_seconds")
# Added by the Optuna sweeper to every trial (its trial number differs): not a hyper-parameter.
HIDDEN_OVERRIDES = ("+callbacks.optuna_pruning",)


class ReportError(UserError):
    """A directory that holds no sweep jobs."""


def row(job: sweepdir.Job) -> dict[str, Any]:
    """One job as a row: its shown overrides, status, final metrics and message."""
    overrides = {k: v for k, v in job.overrides.items() if not k.startswith(HIDDEN_OVERRIDES)}
    values = {"job": str(job.dir), "overrides": overrides, "status": job.status}
    return {**values, **{k: job.metrics.get(k) for k in METRICS}, "error": job.message or ""}


def collect(sweep_dir: Path, sort_by: str = "test/acc") -> tuple[list[str], list[dict[str, Any]]]:
    """The varying override keys and one row per job, best `sort_by` first, failures last."""
    rows = [row(job) for job in sweepdir.jobs(sweep_dir)]
    if not rows:
        raise ReportError(
            f"{sweep_dir} holds no sweep jobs (no */.hydra/ below it). Pass the directory a "
            "multirun wrote, e.g. multirun/<date>/<time>, the one that holds the numbered job directories."
        )
    keys = sorted({k for r in rows for k in r["overrides"]})
    varying = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    order = {status: n for n, status in enumerate(sweepdir.STATUSES)}

    def rank(r: dict[str, Any]) -> tuple:
        value = r.get(sort_by)
        return order[r["status"]], value is None, -(value or 0.0)

    return varying, sorted(rows, key=rank)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _short(value: str) -> str:
    """An override value as typed, or a float that Optuna drew (0.027372102153683506) to 4 digits."""
    try:
        return f"{float(value):.4g}" if len(value) > 8 and any(c in value for c in ".e") else value
    except ValueError:
        return value


def table(
    varying: list[str], rows: list[dict[str, Any]], sweep_dir: Path, fmt=_cell, short=_short
) -> tuple[list[str], list[list[str]]]:
    """Header and cells: job (relative), varying overrides (through short), status, metrics (through fmt), error."""
    header = ["job", *varying, "status", *METRICS, "error"]
    cells = []
    for r in rows:
        job = str(Path(r["job"]).relative_to(sweep_dir)) if Path(r["job"]) != sweep_dir else "."
        cells.append(
            [job, *(short(r["overrides"].get(k, "")) for k in varying), r["status"]]
            + [fmt(r.get(m)) for m in METRICS]
            + [r["error"]]
        )
    return header, cells


def markdown(header: list[str], cells: list[list[str]], title: str) -> str:
    def line(items: list[str]) -> str:
        return "| " + " | ".join(str(i).replace("|", "\\|") for i in items) + " |"

    lines = [f"# {title}", "", line(header), line(["---"] * len(header)), *map(line, cells)]
    return "\n".join(lines) + "\n"


def over_seeds(varying: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: per setting of the other varying overrides, its finished seeds' spread.

    test/acc as mean ± sample standard deviation (in %, over the jobs with status ok), its
    min and max, and the median train_seconds and train + test seconds.
    """
    others = [k for k in varying if k != "seed"]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok" and r.get("test/acc") is not None:
            groups.setdefault(tuple(r["overrides"].get(k, "") for k in others), []).append(r)
    header = [*others, "seeds", "test/acc % mean ± std", "min", "max", "train s (median)", "train + test s (median)"]
    cells = []
    for setting, jobs in sorted(groups.items(), key=lambda g: -statistics.mean(j["test/acc"] for j in g[1])):
        acc = [100 * j["test/acc"] for j in jobs]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        seeds = " ".join(sorted((j["overrides"]["seed"] for j in jobs), key=lambda v: (len(v), v)))
        totals = [j["train_seconds"] + (j.get("test_seconds") or 0.0) for j in jobs]
        cells.append(
            [
                *(_short(v) for v in setting),
                seeds,
                f"{statistics.mean(acc):.2f} ± {std:.2f}",
                f"{min(acc):.2f}",
                f"{max(acc):.2f}",
                f"{statistics.median(j['train_seconds'] for j in jobs):.2f}",
                f"{statistics.median(totals):.2f}",
            ]
        )
    return header, cells


def report(sweep_dir: str | Path, sort_by: str = "test/acc") -> str:
    """Write report.md and report.csv into `sweep_dir`; return the Markdown table.

    Args:
        sweep_dir: the multirun directory (the one holding the numbered job directories).
        sort_by: the metric that orders finished jobs, highest first.
    """
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a directory: pass the multirun directory of a sweep.")
    varying, rows = collect(sweep_dir, sort_by)
    header, cells = table(varying, rows, sweep_dir)
    counts = {s: sum(r["status"] == s for r in rows) for s in sweepdir.STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    text = markdown(header, cells, f"Sweep {sweep_dir} ({len(rows)} jobs: {summary}; sorted by {sort_by})")
    if "seed" in varying:
        text += "\n" + markdown(*over_seeds(varying, rows), "Over seeds (finished jobs; best mean first)")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    full = table(varying, rows, sweep_dir, fmt=lambda v: "" if v is None else v, short=str)
    writer.writerows(full[1])  # full precision
    write_atomic(sweep_dir / "report.md", text)
    write_atomic(sweep_dir / "report.csv", buffer.getvalue())
    return text


class SweepReport(Callback):
    """A Hydra callback (conf/hydra/default.yaml): a multirun ends by printing `mnist-lab report <sweep dir>`.

    Hydra calls on_multirun_end only when every job returned (a failed job makes the sweep
    raise before it); the failure message then names the report command instead.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            text = report(sweep_dir)
        except Exception as e:  # the sweep itself has finished: a report that fails must not fail it
            print(f"\n(no sweep report for {sweep_dir}: {failure_message(e)})")
            return
        print(f"\n{text}", end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lab report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. multirun/2026-01-31/12-00-00.000000")
    parser.add_argument("--sort", default="test/acc", choices=[m for m in METRICS if m != "epochs"])
    args = parser.parse_args(argv)
    with user_errors():
        print(report(args.sweep_dir, args.sort), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
