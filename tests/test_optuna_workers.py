"""Two Optuna searches sharing one study, on a real PostgreSQL server and on a journal file.

Each search is `python -m mnist_lab -m hparams_search=cnn_optuna ...` on tiny settings, with a
1 s heartbeat and a 5 s grace period so that a killed search's trial is taken over in seconds.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mnist_lab.search import open_storage, trial_id
from tests import postgres_server
from tests.conftest import TINY

# Two test batches of 500 and 500 validation images, as in test_sweeps.py: a trial takes seconds.
SMALL = [o for o in TINY if not o.startswith("trainer.limit_test_batches")] + ["trainer.limit_test_batches=1"]
GOOD, BAD = 0.05, 1e-6  # 1e-6 stays near chance (0.1) where 0.05 reaches 0.5+ after one epoch
STUDY = "workers"


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the whole test run; each test makes its own database."""
    reason = postgres_server.missing()
    if reason:
        pytest.skip(reason)
    server = postgres_server.Server()
    server.start()
    yield server
    server.stop()


def search_command(sweep: Path, storage: str, n_trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mnist_lab",
        "-m",
        "hparams_search=cnn_optuna",
        *SMALL,
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={STUDY}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=5",
        # The preset's space, narrowed to the learning rate: the command line's values win.
        f"optimizer.lr=choice({GOOD},{BAD})",
        "data.batch_size=64",
        "optimizer.weight_decay=0",
        "model.dropout=0",
        *extra,
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    # Its own process group: killing it kills the search with the job it runs.
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(search: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    assert search.wait(timeout=timeout) == 0, log.read_text()[-4000:]


def queued_study(storage: str, lrs: list[float]) -> None:
    """The study the searches load, with its first trials' learning rates queued in order."""
    study = optuna.create_study(study_name=STUDY, storage=open_storage(storage), direction="maximize")
    for lr in lrs:
        study.enqueue_trial({"optimizer.lr": lr})


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(storage))


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from hydra_plugins.mnist_lab_optuna.sweeper import counted_trials

    return counted_trials(study)


def search_of(process: subprocess.Popen) -> str:
    return f"{socket.gethostname()}:{process.pid}"


def two_searches_run_n_trials_between_them(tmp_path: Path, storage: str) -> None:
    """Two searches at once, n_trials=4: good, good, bad, bad learning rates queued in that order.

    Each search's first trial is a good one (both start before either finishes a trial), so a
    bad trial starts after a good one has finished and the median pruner stops it at its first
    epoch: the later bad trial (typically the other search's) is judged against both.
    """
    sweep = tmp_path / "search"
    queued_study(storage, [GOOD, GOOD, BAD, BAD])
    # The preset's MedianPruner, judging from the first finished trial and the first epoch on.
    pruner = ["hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0"]
    command = search_command(sweep, storage, 4, "trainer.max_epochs=1", *pruner)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    searches = [start(command, log) for log in logs]
    for search, log in zip(searches, logs):
        finish(search, log)

    study = load(storage)
    trials = counted(study)
    assert len(trials) == 4 and {t.user_attrs["search"] for t in trials} == {search_of(s) for s in searches}
    # One run directory per counted trial, named by its number; surplus trials (two searches
    # asking for the last trial at once) never ran.
    runs = {int(d.name) for d in sweep.iterdir() if d.name.isdigit()}
    assert runs == {t.number for t in trials}
    # Each trial ran once: the searches' logs hold one outcome line per trial number, together.
    outcomes = [int(n) for log in logs for n in re.findall(r"Trial (\d+)(?::| pruned)", log.read_text())]
    assert sorted(outcomes) == sorted(runs)

    by_lr = {lr: [t for t in trials if t.params["optimizer.lr"] == lr] for lr in (GOOD, BAD)}
    assert all(t.state == TrialState.PRUNED for t in by_lr[BAD])
    assert all(t.intermediate_values[0] > 0.3 for t in by_lr[GOOD])  # the measured 0.5+, less a margin
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # A pruning decision made with the other search's trial: one that finished before it started.
    assert any(
        c.user_attrs["search"] != p.user_attrs["search"] and c.datetime_complete < p.datetime_start
        for p in by_lr[BAD]
        for c in complete
    ), [(t.number, t.state, t.user_attrs, t.datetime_start, t.datetime_complete) for t in study.trials]
    assert "best_trial:" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.slow
def test_two_searches_share_a_postgres_study(tmp_path, postgres):
    two_searches_run_n_trials_between_them(tmp_path, postgres.create_database("shared"))


@pytest.mark.slow
def test_two_searches_share_a_journal_file(tmp_path):
    two_searches_run_n_trials_between_them(tmp_path, str(tmp_path / "study.log"))


@pytest.mark.slow
def test_a_killed_search_leaves_its_trial_failed_and_requeued(tmp_path, postgres):
    """Kill one of two searches mid-trial: the other marks its trial failed and runs it again;
    a resumed search with a larger n_trials runs only the trials still missing."""
    storage, sweep = postgres.create_database("killed"), tmp_path / "search"
    queued_study(storage, [GOOD, GOOD])
    # The preset's pruner prunes nothing before 5 finished trials; trials report each epoch to it.
    command = search_command(sweep, storage, 2, "trainer.max_epochs=2")
    victim, survivor = start(command, tmp_path / "victim.log"), start(command, tmp_path / "survivor.log")

    study = load(storage)
    deadline = time.monotonic() + 120
    while True:  # the victim's trial, once it has finished its first epoch
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get("search") == search_of(victim) and t.intermediate_values]
        if mine:
            break
        assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    finish(survivor, tmp_path / "survivor.log")

    study = load(storage)
    killed = study.trials[mine[0].number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"] is True
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert [(t.state, t.params, t.user_attrs["search"]) for t in retry] == [
        (TrialState.COMPLETE, killed.params, search_of(survivor))
    ]
    assert len(counted(study)) == 2 and killed not in counted(study)
    assert (sweep / str(retry[0].number) / "metrics.json").exists()

    before = {t.number for t in study.trials}
    resumed = start(search_command(sweep, storage, 3, "trainer.max_epochs=1"), tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    study = load(storage)
    new = [t for t in study.trials if t.number not in before]
    assert len(counted(study)) == 3
    assert [(t.state, t.user_attrs["search"]) for t in new] == [(TrialState.COMPLETE, search_of(resumed))]


def test_a_surplus_trial_does_not_run_or_count_and_its_parameters_wait_in_the_queue():
    """Two searches that ask for the last of n_trials at once: the higher trial number gives way."""
    from hydra_plugins.mnist_lab_optuna.sweeper import OptunaSweeper

    sweeper = OptunaSweeper("s", None, "maximize", 2, 1, None, None, "val/acc", None, 1.0, 5.0)
    study = optuna.create_study(study_name="s", direction="maximize")
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.tell(study.ask(space), 0.5)
    others, mine = study.ask(space), study.ask(space)  # both asked while 1 of 2 trials was done
    assert sweeper.admitted(study, others)
    assert not sweeper.admitted(study, mine)
    assert study.trials[mine.number].state == TrialState.FAIL
    assert study.trials[mine.number].user_attrs == {"surplus": True} and len(counted(study)) == 1
    assert study.ask(space).params == mine.params


def test_only_trials_whose_heartbeat_stopped_are_requeued(tmp_path):
    from hydra_plugins.mnist_lab_optuna.sweeper import HEARTBEAT, requeue_interrupted

    storage = open_storage(str(tmp_path / "study.log"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    alive, dead = study.ask(space), study.ask(space)
    for trial, age in ((alive, 2.0), (dead, 8.0)):
        storage.set_trial_system_attr(trial_id(storage, "s", trial.number), HEARTBEAT, time.time() - age)
    requeue_interrupted(study, storage, grace_period=5.0)
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    retry = study.ask(space)
    assert retry.number == 2 and retry.params == dead.params and retry.user_attrs == {"retry_of": dead.number}


def test_a_database_url_without_its_driver_names_the_extra():
    from mnist_lab.errors import ConfigError

    with pytest.raises(ConfigError) as error:  # pg8000: a PostgreSQL driver this project does not install
        open_storage("postgresql+pg8000://user@127.0.0.1:1/study")
    message = str(error.value)
    assert "postgresql+pg8000://user@127.0.0.1:1/study" in message and 'pip install -e ".[postgres]"' in message
