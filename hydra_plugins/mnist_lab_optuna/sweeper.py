"""A Hydra sweeper that runs an Optuna study with ask-and-tell, through any Hydra launcher.

Why not hydra-optuna-sweeper 1.2: it pins optuna<3, its SQLite storage fails under
SQLAlchemy 2 and it cannot prune. This one is small: ask the study for trials, launch one job
per trial (its run directory is named by the trial number, so a resumed search never reuses
one), tell the study each job's `optimized_metric`, its pruning or its failure.

- Persistent: `storage` + `study_name` name the study; running the same command again loads
  it and runs only the trials still missing from `n_trials`.
- Many searches, one study: commands sharing a storage (PostgreSQL, a journal file) run
  `n_trials` together. Each records a heartbeat for its running trials; a trial whose
  heartbeat stops for `grace_period` seconds (its search was killed) is marked failed and its
  parameters queued again, for whichever search looks next.
- Pruning: each job gets an `OptunaPruning` callback (mnist_lab/search.py) that reports the
  monitored metric per epoch to its trial and stops the run when the pruner says so.
- Failures: a job that raises is a FAIL trial with its message; the search goes on.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Hydra's side of an Optuna study; arguments as in config.OptunaSweeperConf."""

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: Any | None,
        pruner: Any | None,
        monitor: str,
        params: DictConfig | None,
        heartbeat_interval: float,
        grace_period: float,
    ) -> None:
        self.study_name, self.storage, self.direction = study_name, storage, direction
        self.n_trials, self.n_jobs, self.monitor = n_trials, n_jobs, monitor
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: DictConfig | None = None
        self.sampler: Any | None = None  # seeded at the first trial (see ask)
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from hydra.utils import instantiate
        from optuna.trial import TrialState

        from mnist_lab.search import open_storage
        from mnist_lab.sweepdir import parse_overrides

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        overrides = parse_overrides(lines, self.hydra_context.config_loader)
        space, fixed = {}, {}
        for override in overrides:  # later ones (the command line) win
            key = override.get_key_element()
            space.pop(key, None)
            fixed.pop(key, None)
            if override.is_sweep_override():
                space[key] = distribution(override)
            else:
                fixed[key] = f"{key}={override.get_value_element_as_str()}"

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        pruner = instantiate(self.pruner_cfg) if self.pruner_cfg is not None else optuna.pruners.NopPruner()
        storage = open_storage(self.storage)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            pruner=pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        with Heartbeat(storage, self.study_name, self.heartbeat_interval) as heartbeat:
            while True:
                requeue_interrupted(study, storage, self.grace_period)
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                done = len(counted_trials(study))
                free = self.n_trials - done - len(running)
                if free <= 0:
                    if not running:
                        log.info(f"Study {self.study_name}: {done} trials done")
                        break
                    # Other searches' trials: wait until they end, or until their heartbeat stops
                    # and one of them is queued again for this search to run.
                    time.sleep(self.heartbeat_interval)
                    continue
                log.info(f"Study {self.study_name}: {done} trials done, {len(running)} running, {free} to run")
                trials = [self.ask(study, space, heartbeat) for _ in range(min(self.n_jobs, free))]
                trials = [t for t in trials if self.admitted(study, t) and self.composes(study, t, fixed)]
                for batch in consecutive(trials):  # job number = trial number: unique run dirs
                    jobs = [self.job_overrides(t, fixed) for t in batch]
                    returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
                    for trial, ret in zip(batch, returns):
                        self.tell(study, trial, ret)
                heartbeat.clear()
        self.write_results(study, sweep_dir)
        return study

    def ask(self, study: Any, space: dict[str, Any], heartbeat: Heartbeat) -> Any:
        """A new trial, or one queued again, with its parameters drawn from `space`."""
        trial = study.ask()
        heartbeat.add(trial.number)
        trial.set_user_attr("search", f"{socket.gethostname()}:{os.getpid()}")
        if self.sampler is None:
            # The search's first trial number seeds its sampler: unique among the searches that
            # share the study, so searches started together draw different parameters.
            study.sampler = self.sampler = self.make_sampler(trial.number)
        for name, dist in space.items():
            suggest(trial, name, dist)
        return trial

    def make_sampler(self, first_trial: int) -> Any:
        """The configured sampler, seeded with seed + the number of the search's first trial.

        A sampler seeded as in the first session would draw that session's parameters again.
        """
        import optuna
        from hydra.utils import instantiate

        if self.sampler_cfg is None:
            return optuna.samplers.TPESampler()
        cfg = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        if cfg.get("seed") is not None:
            cfg["seed"] += first_trial
        return instantiate(cfg)

    def admitted(self, study: Any, trial: Any) -> bool:
        """Whether the trial fits in n_trials; if not, a `surplus` failed trial that does not count.

        Searches that ask at the same moment can hold one trial too many between them: trial
        numbers are given out in order, so the higher numbers give way. A surplus trial's
        parameters are queued again (they may have come from the queue): the next trial asked runs them.
        """
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ahead = len(counted_trials(study)) + len([t for t in running if t.number < trial.number])
        if ahead < self.n_trials:
            return True
        retry = {k: v for k, v in trial.user_attrs.items() if k == "retry_of"}
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs=retry)
        log.info(f"Trial {trial.number} is beyond n_trials={self.n_trials} (another search took the last one)")
        return False

    def composes(self, study: Any, trial: Any, fixed: dict[str, str]) -> bool:
        """Whether the trial's config composes (Hydra's check before launching); if not, a failed trial."""
        from optuna.trial import TrialState

        try:
            self.validate_batch_is_legal([self.job_overrides(trial, fixed)])
        except Exception as e:  # a value the config's schema rejects: this trial fails, not the search
            trial.set_user_attr("error", str(e)[:2000])
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} does not compose: {e}")
            return False
        return True

    def job_overrides(self, trial: Any, fixed: dict[str, str]) -> list[str]:
        params = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
        jobs = [v for k, v in fixed.items() if k not in trial.params] + params
        if self.storage is not None and self.pruner_cfg is not None:
            callback = {
                "_target_": "mnist_lab.search.OptunaPruning",
                "storage": self.storage,
                "study_name": self.study_name,
                "trial_number": trial.number,
                "pruner": OmegaConf.to_container(self.pruner_cfg, resolve=True),
                "monitor": self.monitor,
            }
            jobs.append(f"+callbacks.optuna_pruning={override_value(callback)}")
        return jobs

    def tell(self, study: Any, trial: Any, ret: Any) -> None:
        from optuna.trial import TrialState

        if ret.status != JobStatus.COMPLETED:
            error = job_error(ret)
            if study.get_trials(deepcopy=False)[trial.number].state != TrialState.RUNNING:
                log.warning(f"Trial {trial.number} failed after another search took it for interrupted: {error}")
                return
            trial.set_user_attr("error", str(error)[:2000])
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {error}")
            return
        # The job's OptunaPruning callback wrote to the storage; `trial` (from ask()) holds only
        # the attributes it was created with, the study's trials are read again.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        attrs = next((t.user_attrs for t in running if t.number == trial.number), None)
        if attrs is None:  # failed by another search that missed this one's heartbeat: queued again there
            log.warning(f"Trial {trial.number} was taken for interrupted by another search; its result is dropped")
            return
        value = ret.return_value
        if "pruned_epoch" in attrs:
            study.tell(trial, state=TrialState.PRUNED)
            log.info(f"Trial {trial.number} pruned after epoch {attrs['pruned_epoch']}")
        elif value is None or not math.isfinite(float(value)):
            trial.set_user_attr("error", f"objective is {value}")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(value))
            log.info(f"Trial {trial.number}: {float(value):.4f} with {trial.params}")

    def write_results(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        from mnist_lab.files import write_atomic

        states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        results: dict[str, Any] = {"study_name": self.study_name, "storage": self.storage, "trials": states}
        if states["complete"]:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            log.info(f"Best trial {best.number}: {best.value:.4f} with {best.params}")
        # Atomic: searches sharing the study end at about the same time.
        write_atomic(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))


def job_error(ret: JobReturn) -> Exception:
    """The exception a failed job raised: Hydra's `return_value` raises it (and names the job on stderr)."""
    try:
        ret.return_value  # noqa: B018  # the property raises the job's exception
    except Exception as e:
        return e
    raise ValueError(f"job {ret.overrides} did not fail: status {ret.status}")


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (choice, range, interval)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep, key = override.value(), override.get_key_element()
    tags = getattr(sweep, "tags", set()) or set()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution([c for c in sweep.list])
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(values[0], values[-1], step=int(sweep.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):
        if "int" in tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log="log" in tags)
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in tags)
    raise ValueError(f"{key}: unsupported sweep {override.input_line!r}; use choice, range or interval")


def suggest(trial: Any, name: str, dist: Any) -> Any:
    """Draw one parameter with the trial's public suggest_* method for its distribution."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def counted_trials(study: Any) -> list:
    """Finished trials that count towards n_trials (interrupted and surplus trials do not)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return [t for t in done if not (t.user_attrs.get("interrupted") or t.user_attrs.get("surplus"))]


# A trial's system attribute: time.time() of its search's last heartbeat.
HEARTBEAT = "mnist_lab:heartbeat"


# Not Optuna's own heartbeat (RDBStorage(heartbeat_interval=...), fail_stale_trials): the
# journal storage has none, and it is experimental in optuna 5.1. This one serves every storage
# through BaseStorage's public set_trial_system_attr, at the price of comparing the clocks of
# the machines that run searches: grace_period must exceed their difference.
class Heartbeat:
    """A thread that marks this search's running trials alive every `interval` seconds."""

    def __init__(self, storage: Any, study_name: str, interval: float) -> None:
        self.storage, self.study_name, self.interval = storage, study_name, interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def add(self, number: int) -> None:
        from mnist_lab.search import trial_id

        identifier = trial_id(self.storage, self.study_name, number)
        with self.lock:
            self.trial_ids.add(identifier)
        self.record(identifier)

    def clear(self) -> None:
        with self.lock:
            self.trial_ids.clear()

    def record(self, identifier: int) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self.storage.set_trial_system_attr(identifier, HEARTBEAT, time.time())
        except UpdateFinishedTrialError:  # told between the copy of trial_ids and now
            pass

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                identifiers = list(self.trial_ids)
            for identifier in identifiers:
                try:
                    self.record(identifier)
                except Exception as e:  # a storage hiccup: the next beat tries again
                    log.warning(f"Heartbeat of trial id {identifier} not recorded: {e}")


def requeue_interrupted(study: Any, storage: Any, grace_period: float = 0.0) -> None:
    """Trials whose search was killed: mark them failed and queue their parameters again.

    Args:
        study: the study, loaded from `storage`.
        storage: its storage (see mnist_lab.search.open_storage).
        grace_period: seconds since a running trial's last heartbeat (or its start, before the
            first) after which it counts as interrupted; 0 takes every running trial for interrupted.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from mnist_lab.search import trial_id

    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(HEARTBEAT, trial.datetime_start.timestamp())
        if now - last <= grace_period:
            continue
        identifier = trial_id(storage, study.study_name, trial.number)
        try:
            # A FrozenTrial's attributes are a copy: the storage's setter records this one.
            storage.set_trial_user_attr(identifier, "interrupted", True)
            storage.set_trial_state_values(identifier, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another search failed it first, and queued it
            continue
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.warning(f"Trial {trial.number} was interrupted: marked failed, its parameters queued again")


def consecutive(trials: Sequence[Any]) -> list[list[Any]]:
    """Split trials into runs of consecutive numbers (a launcher numbers a batch's jobs from one index)."""
    runs: list[list[Any]] = []
    for t in trials:
        if runs and runs[-1][-1].number + 1 == t.number:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def override_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (strings quoted unless plain words)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if text and all(c.isalnum() or c in "_-./" for c in text) and not text[0].isdigit():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
