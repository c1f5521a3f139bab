"""The job's side of an Optuna search: the study's storage, and pruning from validation results.

The sweeper (hydra_plugins/mnist_lab_optuna) asks the study for a trial, launches a job
with its parameters, and adds an `OptunaPruning` callback to that job's config. The callback
reports `val/acc` after every validation to the trial in the shared storage and stops the
run when the study's pruner judges it clearly worse than the others at that epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl

from mnist_lab.errors import ConfigError


def open_storage(storage: str | None) -> optuna.storages.BaseStorage:
    """An Optuna storage from its config string: a database URL, a journal file, or null (memory).

    Args:
        storage: `sqlite:///path/study.db`, `postgresql+psycopg://user@host/database` (any
            SQLAlchemy URL), a `*.log` journal file path (safe for many processes on a shared
            file system), or null for an in-memory study.
    """
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if "://" in storage:
        # 60 s: parallel jobs report to one SQLite file; they wait for its lock, not fail.
        engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        try:
            return rdb_storage(storage, engine_kwargs)
        except ImportError as e:  # optuna's message names no package
            raise ConfigError(
                f"hydra.sweeper.storage={storage!r} needs a database driver that is not installed ({e.__cause__}). "
                "For PostgreSQL use postgresql+psycopg://user@host/database and install its driver with the "
                'project\'s extra: pip install -e ".[postgres]"; for another database install the driver its URL names.'
            ) from e
    if storage.endswith(".log"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    raise ConfigError(
        f"hydra.sweeper.storage={storage!r} is neither a database URL (sqlite:///path/study.db) nor a "
        "journal file (path ending in .log). Use one of those, or null for a study kept in memory."
    )


def rdb_storage(url: str, engine_kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """RDBStorage(url), tried again while another process creates the same database's tables.

    Searches started together on an empty PostgreSQL database both create Optuna's tables and
    types; the slower one fails (IntegrityError: duplicate key ... pg_type_typname_nsp_index)
    and, tried again, finds them made.
    """
    import sqlalchemy.exc

    for wait in (0.5, 1.0, 1.5, 2.0):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(wait)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of a study, for a process that knows only the number.

    Optuna keeps a trial's id private (`Trial._trial_id`); these two lookups are `BaseStorage`'s
    public API, the one `optuna.trial.Trial(study, trial_id)` and the storage's setters take.
    """
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


# Not optuna-integration's PyTorchLightningPruningCallback (5.0): it imports the `lightning` package
# (a second Lightning beside pytorch_lightning); it raises TrialPruned (a failed job: no test, no
# pruned.json) where this one stops the run; and under DDP it takes only a database storage.
class OptunaPruning(pl.Callback):
    """Report `monitor` after each validation to an Optuna trial; stop the run if it is pruned.

    Rank 0 talks to the storage and every rank follows its decision. A pruned run stops at the
    end of that epoch, is tested like any other, and leaves `pruned.json` in its run directory.

    Args:
        storage: the study's storage (see `open_storage`).
        study_name: the study.
        trial_number: this job's trial.
        pruner: the study's pruner (the sweeper passes its own config).
        monitor: the metric reported, higher is better for a maximised study.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_number: int,
        pruner: optuna.pruners.BasePruner | None = None,
        monitor: str = "val/acc",
    ) -> None:
        self.storage, self.study_name, self.trial_number = storage, study_name, trial_number
        self.pruner, self.monitor = pruner, monitor
        self._trial: optuna.trial.Trial | None = None

    def trial(self) -> optuna.trial.Trial:
        if self._trial is None:
            storage = open_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
            # The sweeper's trial, asked in another process: report() and should_prune() on it.
            self._trial = optuna.trial.Trial(study, trial_id(storage, self.study_name, self.trial_number))
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, value = False, trainer.callback_metrics.get(self.monitor)
        if trainer.is_global_zero and value is not None:
            self.trial().report(float(value), step=trainer.current_epoch)
            prune = self.trial().should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
            if trainer.is_global_zero and value is not None:
                self.record(trainer, float(value))

    def record(self, trainer: pl.Trainer, value: float) -> None:
        epoch = trainer.current_epoch
        reason = f"pruned after epoch {epoch}: {self.monitor} {value:.4f}"
        self.trial().set_user_attr("pruned_epoch", epoch)
        marker: dict[str, Any] = {"epoch": epoch, self.monitor: value, "reason": reason}
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "pruned.json").write_text(json.dumps(marker, indent=2) + "\n")
