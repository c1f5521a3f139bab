"""The sweeper's config schema, registered as hydra/sweeper=mnist_lab_optuna.

Hydra imports every module under hydra_plugins/ at start-up, so this one stays light: no
optuna or torch import here.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_lab_optuna.sweeper.OptunaSweeper"
    # sampler and pruner reach the sweeper as configs: it re-seeds the sampler on resume and
    # hands the pruner's config to every job.
    _recursive_: bool = False
    # The study: same name and storage again resumes it (finished trials count towards n_trials).
    study_name: str = "mnist_lab"
    # sqlite:///path/study.db, postgresql+psycopg://user@host/database (pip install -e ".[postgres]"),
    # a journal file path ending in .log, or null (in memory: no resuming, no pruning).
    storage: str | None = None
    direction: str = "maximize"
    # Trials the study should hold when the search ends (complete, pruned and failed ones),
    # counted over every search that shares the study.
    n_trials: int = 20
    # Trials launched together: jobs the launcher may run in parallel (hydra/launcher=joblib).
    n_jobs: int = 1
    # An optuna sampler config (_target_ + arguments), or null for TPE with its defaults.
    sampler: Any | None = None
    # An optuna pruner config, or null: no pruning.
    pruner: Any | None = None
    # Reported to the trial after every validation epoch; the pruner judges it.
    monitor: str = "val/acc"
    # The search space: config key -> choice(...), interval(...), tag(log, interval(...)),
    # tag(int, interval(...)) or range(...). Command-line sweeps add to it and win.
    params: dict[str, str] = field(default_factory=dict)
    # Seconds between the heartbeats a search records for its running trials, and seconds
    # without one after which another search (or this one, resumed) takes such a trial for
    # interrupted: marked failed, its parameters queued again. grace_period > the longest pause
    # of a busy search (its job holds Python's lock) plus the clock difference between machines.
    heartbeat_interval: float = 10.0
    grace_period: float = 60.0


ConfigStore.instance().store(
    group="hydra/sweeper", name="mnist_lab_optuna", node=OptunaSweeperConf, provider="mnist_lab"
)
