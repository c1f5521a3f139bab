"""The sweep directory: what a multirun leaves in `hydra.sweep.dir`, read in one place.

    multirun.yaml               the sweep's config; hydra.overrides.task is its command line
    <n>/                        one job (Hydra's job number, or the Optuna trial number)
        .hydra/                 overrides.yaml, config.yaml, hydra.yaml: the job as composed
        metrics.json            the job finished (train.py)
        pruned.json             ... and the study's pruner stopped it early (search.py)
        error.txt               the job failed: its message, a blank line, the traceback (__main__.py)
    optimization_results.yaml   an Optuna search's outcome (hydra_plugins/mnist_lab_optuna)
    report.md, report.csv       `mnist-lab report` (tools/report.py)

Each job directory is also a run directory (rundir.py says what else it holds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

# A job's state, best first: as `mnist-lab report` orders and counts them.
STATUSES = ("ok", "pruned", "failed", "incomplete")


@dataclass
class Job:
    """One job of a sweep, as its directory records it."""

    dir: Path
    # The job's command-line overrides, key (with any +/~ prefix) -> value as written.
    overrides: dict[str, str]
    status: str  # one of STATUSES
    # metrics.json of a finished (ok or pruned) job, else {}.
    metrics: dict[str, Any] = field(default_factory=dict)
    # Why it failed (the message before the traceback) or was pruned, on one line; else None.
    message: str | None = None

    def config(self) -> DictConfig:
        """The job's composed config (.hydra/config.yaml)."""
        return cast(DictConfig, OmegaConf.load(self.dir / ".hydra" / "config.yaml"))

    def choices(self) -> DictConfig:
        """The option chosen in each config group (`model` -> `cnn`), from Hydra's record of the job."""
        return cast(DictConfig, OmegaConf.load(self.dir / ".hydra" / "hydra.yaml").hydra.runtime.choices)


def read_job(job_dir: Path) -> Job:
    """One job's overrides, status, metrics and message."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides: dict[str, str] = {}
    for item in OmegaConf.load(overrides_file) if overrides_file.is_file() else []:
        key, _, value = str(item).partition("=")
        overrides[key] = value
    if (job_dir / "metrics.json").is_file():
        metrics = json.loads((job_dir / "metrics.json").read_text())
        pruned = job_dir / "pruned.json"
        if pruned.is_file():
            return Job(job_dir, overrides, "pruned", metrics, json.loads(pruned.read_text()).get("reason", "pruned"))
        return Job(job_dir, overrides, "ok", metrics)
    if (job_dir / "error.txt").is_file():
        message = (job_dir / "error.txt").read_text().split("\n\nTraceback")[0]
        return Job(job_dir, overrides, "failed", message=" ".join(message.split()))
    return Job(job_dir, overrides, "incomplete")  # still running, or killed


def jobs(sweep_dir: Path) -> list[Job]:
    """Every job below `sweep_dir` (a directory holding `.hydra/`), in path order; [] when there is none."""
    return [read_job(d.parent) for d in sorted(Path(sweep_dir).glob("**/.hydra")) if d.is_dir()]


# ----- the sweep's overrides ------------------------------------------------------------------
def parse_overrides(lines: Sequence[str], config_loader: Any = None) -> list[Override]:
    """Command-line overrides in Hydra's grammar (`lr=0.1,0.2`, `lr=interval(0,1)`), as Hydra's Override objects.

    Hydra's OverridesParser is the parser its sweeper plugins use; this is the project's one use
    of it (the sweeper's search space and swept_keys), and tests/test_sweeps.py pins the
    behaviour both rely on.

    Args:
        lines: the overrides as typed.
        config_loader: the sweeper's config loader, for sweeps over a config group (`glob(...)`).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create(config_loader=config_loader).parse_overrides(list(lines))


def swept_keys(output_dir: Path) -> list[str]:
    """The keys that the sweep `output_dir` is a job of varies (from the sweep's multirun.yaml), as `group/key`; else []."""
    # Hydra writes multirun.yaml into the sweep directory; a job is its subdir (the job or trial number).
    record = next((p / "multirun.yaml" for p in output_dir.parents[:2] if (p / "multirun.yaml").is_file()), None)
    if record is None:
        return []
    sweep = OmegaConf.load(record).hydra
    try:
        overrides = parse_overrides(list(sweep.overrides.task))
    except Exception:  # a record that this Hydra cannot parse: no keys rather than no HParams tab
        return []
    keys = [o.key_or_group for o in overrides if o.is_sweep_override()]
    keys += [str(k) for k in (OmegaConf.select(sweep, "sweeper.params") or {})]  # e.g. an Optuna search space
    return [k.replace(".", "/") for k in dict.fromkeys(keys)]
