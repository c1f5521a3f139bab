"""A Hydra sweeper that runs an Optuna study with ask-and-tell, through any Hydra launcher.

Why not hydra-optuna-sweeper 1.2: it pins optuna<3, its SQLite storage fails under
SQLAlchemy 2 and it cannot prune. This one is small: ask the study for trials, launch one job
per trial (its run directory is named by the trial number, so a resumed search never reuses
one), tell the study each job's `optimized_metric`, its pruning or its failure.

- Persistent: `storage` + `study_name` name the study; running the same command again loads
  it, marks trials that were running when the search was killed as failed (their parameters
  are queued again) and runs only the trials still missing from `n_trials`.
- Pruning: each job gets an `OptunaPruning` callback (mnist_lab/search.py) that reports the
  monitored metric per epoch to its trial and stops the run when the pruner says so.
- Failures: a job that raises is a FAIL trial with its message; the search goes on.
"""

from __future__ import annotations

import logging
import math
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
    ) -> None:
        self.study_name, self.storage, self.direction = study_name, storage, direction
        self.n_trials, self.n_jobs, self.monitor = n_trials, n_jobs, monitor
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: DictConfig | None = None
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
        study.sampler = self.make_sampler(len(study.trials))
        requeue_interrupted(study, storage)
        remaining = self.n_trials - len(counted_trials(study))
        log.info(f"Study {self.study_name}: {len(counted_trials(study))} trials done, {max(remaining, 0)} to run")
        while remaining > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            remaining -= len(trials)
            trials = [t for t in trials if self.composes(study, t, fixed)]
            for batch in consecutive(trials):  # job number = trial number: unique run dirs
                jobs = [self.job_overrides(t, fixed) for t in batch]
                returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
                for trial, ret in zip(batch, returns):
                    self.tell(study, trial, ret)
        self.write_results(study, sweep_dir)
        return study

    def make_sampler(self, trials_so_far: int) -> Any:
        """The configured sampler; a resumed study seeds it with seed + trials so far.

        A sampler seeded as in the first session would draw that session's parameters again.
        """
        import optuna
        from hydra.utils import instantiate

        if self.sampler_cfg is None:
            return optuna.samplers.TPESampler()
        cfg = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        if cfg.get("seed") is not None:
            cfg["seed"] += trials_so_far
        return instantiate(cfg)

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
            trial.set_user_attr("error", str(error)[:2000])
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {error}")
            return
        # The job's OptunaPruning callback wrote to the storage; `trial` (from ask()) holds only
        # the attributes it was created with, the study's trials are read again.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        attrs = next(t.user_attrs for t in running if t.number == trial.number)
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

        states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        results: dict[str, Any] = {"study_name": self.study_name, "storage": self.storage, "trials": states}
        if states["complete"]:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            log.info(f"Best trial {best.number}: {best.value:.4f} with {best.params}")
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


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


def counted_trials(study: Any) -> list:
    """Finished trials that count towards n_trials (trials killed with the search do not)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return [t for t in done if not t.user_attrs.get("interrupted")]


def requeue_interrupted(study: Any, storage: Any) -> None:
    """Trials left running by a killed search: mark them failed and queue their parameters again.

    Args:
        study: the study, loaded from `storage`.
        storage: its storage (see mnist_lab.search.open_storage).
    """
    from optuna.trial import TrialState

    from mnist_lab.search import trial_id

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # A FrozenTrial's attributes are a copy: the storage's setter records this one.
        storage.set_trial_user_attr(trial_id(storage, study.study_name, trial.number), "interrupted", True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
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
