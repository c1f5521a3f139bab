"""Sweeps end to end: failures recorded, reports, TensorBoard HParams, launchers, Optuna resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_lab.tools.report import report
from tests.conftest import TINY, compose_config

# Two test batches of 500 and 500 validation images: each job of a sweep takes seconds.
SMALL = [o for o in TINY if not o.startswith("trainer.limit_test_batches")] + ["trainer.limit_test_batches=1"]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_lab", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_parallel_sweep_records_a_failing_job_and_reports_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *SMALL, "hydra/launcher=joblib", "data.batch_size=64,128,-4", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr[-3000:]  # something failed, and the exit status says so
    assert "data.batch_size=-4" in result.stderr
    # Hydra skips its end-of-sweep callbacks (the report) after a failed job: the error names the command.
    assert f"`mnist-lab report {sweep}` tabulates every job" in result.stderr
    # The failing job left its message; the others ran to the end in their own directories.
    assert "data.batch_size=-4" in (sweep / "2" / "error.txt").read_text().split("\n\n")[0]
    finished = {n: json.loads((sweep / n / "metrics.json").read_text()) for n in ("0", "1")}
    # Tiny one-epoch models, which differ between machines as seeds do. Measured on the 2-core
    # AMD EPYC over seeds 0-4, default threads and OMP_NUM_THREADS=1: batch 64 53.2-70.6%,
    # batch 128 37.8-52.6%. 0.2 is 17 points under the lowest seed and 2x chance.
    assert all(m["test/acc"] > 0.2 for m in finished.values())
    assert not (sweep / "2" / "metrics.json").exists()

    text = report(sweep)
    assert (sweep / "report.md").read_text() == text
    lines = (sweep / "report.csv").read_text().splitlines()
    assert lines[0].startswith("job,data.batch_size,status,test/acc")
    rows = [line.split(",") for line in lines[1:]]
    assert [(r[0], r[2]) for r in rows][-1] == ("2", "failed") and "data.batch_size=-4" in lines[-1]
    ok = sorted((r for r in rows if r[2] == "ok"), key=lambda r: -float(r[3]))
    assert [r[0] for r in rows[:2]] == [r[0] for r in ok]  # best test/acc first
    assert {float(r[3]) for r in ok} == {m["test/acc"] for m in finished.values()}

    # `tensorboard --logdir <sweep>` sees one run per finished job, each with its HParams
    # summary and the same final test/acc as its metrics.json.
    tb = EventMultiplexer()
    tb.AddRunsFromDirectory(str(sweep))
    tb.Reload()
    runs = {name.split("/")[0]: name for name in tb.Runs()}
    assert set(runs) == {"0", "1"}
    for job, run in runs.items():
        assert "_hparams_/session_start_info" in tb.PluginRunToTagToContent("hparams")[run]
        assert tb.Scalars(run, "test/acc")[-1].value == finished[job]["test/acc"]
        # Its HParams: each group's choice, the values a run can change, the seed and the sweep's
        # overrides; the key the sweep varies is marked `differs`, so TensorBoard shows it first.
        experiment, hparams = hparams_data(tb, run)
        assert hparams["data/batch_size"].number_value == [64, 128][int(job)]
        assert {"model": "cnn", "optimizer": "sgd", "data": "mnist", "trainer": "default"}.items() <= {
            k: v.string_value for k, v in hparams.items()
        }.items()
        assert hparams["seed"].number_value == 0 and hparams["optimizer/lr"].number_value == pytest.approx(0.05)
        assert hparams["trainer/max_epochs"].number_value == 1  # a command-line override outside the groups
        assert [k for k in hparams if k.endswith(("_target_", "_partial_")) or k.startswith(NOT_HPARAMS)] == []
        assert not [k for k, v in hparams.items() if v.string_value.startswith("/")]  # no paths
        infos = experiment.hparam_infos
        assert [i.name for i in infos if i.differs] == ["data/batch_size"] == [infos[0].name]
        assert len(infos) == len(hparams) < 50  # was 100-odd: the whole flattened config
        metrics = {m.name.tag for m in experiment.metric_infos}
        assert metrics == {"test/acc", "test/loss", "val/acc_best", "time/train_seconds"}


NOT_HPARAMS = ("callbacks", "hydra", "paths", "logger", "data/source")


def hparams_data(tb: EventMultiplexer, run: str):
    """A run's HParams summary: (the Experiment, its columns; the session's hyper-parameter values)."""
    content = tb.PluginRunToTagToContent("hparams")[run]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return experiment, dict(start.session_start_info.hparams)


def test_a_sweep_report_that_fails_is_one_line_not_a_failed_sweep(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mnist_lab import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("config", return_hydra_config=True).hydra
    callback = instantiate(hydra_cfg.callbacks.sweep_report)  # conf/hydra/default.yaml's _target_
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"(no sweep report for {tmp_path}: ") and "holds no sweep jobs" in out and "\n" not in out


def test_the_terminal_module_imports_no_command():
    """console.py is in the run layer: the sweep report's callback lives with the command, in tools/report.py."""
    import ast

    import mnist_lab.console

    tree = ast.parse(Path(mnist_lab.console.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in modules if m.startswith("mnist_lab.tools")] == []


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_its_own_process(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", *SMALL, "logger=none", "hydra/launcher=submitit_local", "seed=0,1", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2
    metrics = [json.loads((sweep / n / "metrics.json").read_text()) for n in ("0", "1")]
    assert metrics[0]["best_checkpoint"] != metrics[1]["best_checkpoint"]
    assert "| seed |" in report(sweep)


@pytest.mark.slow
def test_optuna_search_resumes_prunes_and_records_failures(tmp_path):
    """A 3-trial study stopped after one trial and started again ends with 3 trials.

    optimizer.lr is drawn from {0.05 (learns), 1e-6 (stays near chance: pruned), -1 (fails)};
    RandomSampler(seed=1) draws 1e-6 in the first session and, re-seeded with 1 + 1 trials
    on resume, -1 and 0.05: one trial of each kind.
    """
    sweep, db = tmp_path / "search", tmp_path / "search" / "study.db"
    search = [
        "-m",
        *SMALL,
        "trainer.max_epochs=2",
        "logger=none",
        "hydra/sweeper=mnist_lab_optuna",
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.storage=sqlite:///{db}",
        "hydra.sweeper.study_name=resume_test",
        "+hydra.sweeper.sampler={_target_:optuna.samplers.RandomSampler,seed:1}",
        # Prune a trial whose val/acc is below 0.3 after any epoch (chance is 0.1).
        "+hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.3}",
        "optimizer.lr=choice(0.05,1e-6,-1.0)",
    ]
    first = run_cli(*search, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="resume_test", storage=f"sqlite:///{db}")
    assert len(study.trials) == 1

    second = run_cli(*search, "hydra.sweeper.n_trials=3")
    assert second.returncode == 0, second.stderr[-3000:]  # a failed trial is part of a search
    study = optuna.load_study(study_name="resume_test", storage=f"sqlite:///{db}")
    trials = {t.params["optimizer.lr"]: t for t in study.trials}
    assert len(study.trials) == 3 and set(trials) == {0.05, 1e-6, -1.0}
    assert trials[0.05].state == TrialState.COMPLETE and trials[0.05].value > 0.3
    assert (
        trials[0.05].value
        == json.loads((sweep / str(trials[0.05].number) / "metrics.json").read_text())["val/acc_best"]
    )
    pruned = trials[1e-6]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values[0] < 0.3
    assert json.loads((sweep / str(pruned.number) / "metrics.json").read_text())["epochs"] == 1  # stopped early
    assert trials[-1.0].state == TrialState.FAIL and "optimizer.lr" in trials[-1.0].user_attrs["error"]
    assert (sweep / str(trials[-1.0].number) / "error.txt").exists()
    assert "best_trial: " + str(trials[0.05].number) in (sweep / "optimization_results.yaml").read_text()
    statuses = [line.split(" | ")[2] for line in report(sweep).splitlines()[4:]]
    assert statuses == ["ok", "pruned", "failed"]


def test_interrupted_trials_are_failed_and_queued_again(tmp_path):
    """A trial left RUNNING by a killed search is marked failed and its parameters run next."""
    from hydra_plugins.mnist_lab_optuna.sweeper import counted_trials, requeue_interrupted
    from mnist_lab.search import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    killed = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    requeue_interrupted(study, storage)
    assert study.trials[killed.number].state == TrialState.FAIL
    assert study.trials[killed.number].user_attrs == {"interrupted": True}
    assert len(counted_trials(study)) == 1  # the killed trial does not count towards n_trials
    assert study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params == killed.params


def test_launcher_configs_compose_with_their_plugins():
    """Each launcher YAML composes and names a launcher Hydra has discovered; SLURM documents its fields."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    from mnist_lab import CONF_DIR

    discovered = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    for name in ("joblib", "submitit_local", "submitit_slurm"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_ in discovered
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == launcher.gpus_per_node  # one DDP rank per GPU
    for key in ("partition", "timeout_min", "array_parallelism", "setup", "nodes"):
        assert key in launcher


def test_report_of_a_directory_without_jobs_says_what_to_pass(tmp_path, capsys):
    from mnist_lab.tools.report import main

    with pytest.raises(SystemExit) as exit_status:  # the one error boundary: paragraph, exit 1
        main([str(tmp_path)])
    assert exit_status.value.code == 1
    message = capsys.readouterr().err
    assert str(tmp_path) in message and "multirun" in message and "Traceback" not in message


def test_report_gives_each_settings_spread_over_seeds(tmp_path):
    """A seed sweep's report ends with mean ± std per setting; failed jobs are left out of it."""
    jobs = [  # (batch_size, seed, test/acc, train_seconds, test_seconds), or None metrics: failed
        ("64", "0", 0.9900, 7.0, 1.0),
        ("64", "1", 0.9910, 8.0, 1.0),
        ("64", "2", 0.9920, 9.0, 1.0),
        ("128", "0", 0.9800, 5.0, 0.5),
        ("128", "1", None, None, None),
    ]
    for n, (batch, seed, acc, train_s, test_s) in enumerate(jobs):
        job = tmp_path / str(n)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- data.batch_size={batch}\n- seed={seed}\n")
        if acc is None:
            (job / "error.txt").write_text("data.batch_size=128 broke\n\nTraceback ...")
        else:
            metrics = {"test/acc": acc, "train_seconds": train_s, "test_seconds": test_s, "epochs": 1}
            (job / "metrics.json").write_text(json.dumps(metrics))
    text = report(tmp_path)
    seeds_table = text.split("# Over seeds")[1].splitlines()
    rows = [line.strip("| ").split(" | ") for line in seeds_table[4:]]
    assert seeds_table[2].startswith("| data.batch_size | seeds | test/acc % mean ± std")
    assert rows == [
        ["64", "0 1 2", "99.10 ± 0.10", "99.00", "99.20", "8.00", "9.00"],
        ["128", "0", "98.00 ± 0.00", "98.00", "98.00", "5.00", "5.50"],
    ]
    assert (tmp_path / "report.md").read_text() == text


def test_sweep_directory_reader_gives_each_jobs_status_metrics_and_message(tmp_path):
    """One reader for `mnist-lab report` and `finetune_table`: finished, pruned, failed, incomplete."""
    from mnist_lab.sweepdir import jobs

    def job(n: str, **files: str) -> None:
        (tmp_path / n / ".hydra").mkdir(parents=True)
        (tmp_path / n / ".hydra" / "overrides.yaml").write_text(f"- seed={n}\n- '+callbacks.x={{a:1}}'\n")
        for name, text in files.items():
            (tmp_path / n / name.replace("_", ".")).write_text(text)

    job("0", metrics_json='{"test/acc": 0.9}')
    job("1", metrics_json='{"test/acc": 0.5}', pruned_json='{"reason": "pruned after epoch 0: val/acc 0.1"}')
    job("2", error_txt="data.batch_size=-4 is\nnot positive\n\nTraceback (most recent call last):\n  ...")
    job("3")
    (tmp_path / "report.md").write_text("")  # beside the jobs, not one
    found = jobs(tmp_path)
    assert [(j.dir.name, j.status) for j in found] == [
        ("0", "ok"),
        ("1", "pruned"),
        ("2", "failed"),
        ("3", "incomplete"),
    ]
    assert found[0].overrides == {"seed": "0", "+callbacks.x": "{a:1}"} and found[0].metrics == {"test/acc": 0.9}
    assert found[1].message == "pruned after epoch 0: val/acc 0.1" and found[1].metrics["test/acc"] == 0.5
    assert found[2].message == "data.batch_size=-4 is not positive" and found[2].metrics == {}
    assert found[3].message is None and jobs(tmp_path / "3" / ".hydra") == []


def test_the_override_grammar_that_the_sweeper_and_hparams_rely_on():
    """Hydra's OverridesParser, used in one place (sweepdir.parse_overrides): fails if its results change."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    from mnist_lab.sweepdir import parse_overrides

    lines = ["lr=0.1,0.2", "lr=choice(0.1,0.2)", "seed=range(0,3)", "lr=tag(log,interval(1e-4,1e-1))", "+x=5e-2"]
    choices, choice, seeds, interval, plain = parse_overrides([*lines, "model=cnn"])[:5]
    assert [o.is_sweep_override() for o in (choices, choice, seeds, interval, plain)] == [True] * 4 + [False]
    assert isinstance(choices.value(), ChoiceSweep) and choices.value().list == choice.value().list == [0.1, 0.2]
    assert isinstance(seeds.value(), RangeSweep) and list(seeds.value().range()) == [0, 1, 2]
    assert (seeds.value().start, seeds.value().stop, seeds.value().step) == (0, 3, 1)
    assert isinstance(interval.value(), IntervalSweep) and interval.value().tags == {"log"}
    assert (interval.value().start, interval.value().end) == (1e-4, 0.1)
    assert (plain.key_or_group, plain.get_key_element(), plain.get_value_element_as_str()) == ("x", "+x", "0.05")
    assert choice.key_or_group == choice.get_key_element() == "lr"


def test_hparams_summary_is_written_beside_the_runs_scalars_with_the_swept_key_first(tmp_path):
    """records.log_hparams through public writers: TensorBoard reads one run with its HParams and train time."""
    from pytorch_lightning.loggers import TensorBoardLogger

    from mnist_lab.records import log_hparams

    sweep, run = tmp_path / "sweep", tmp_path / "sweep" / "0"
    (run / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['seed=3,4', trainer.max_epochs=1]\n")
    choices = "{model: cnn, optimizer: sgd}"
    (run / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  overrides:\n    task: [seed=3, trainer.max_epochs=1]\n  runtime:\n    choices: {choices}\n"
    )
    cfg = compose_config(["seed=3", "trainer.max_epochs=1"], run)
    logger = TensorBoardLogger(str(run / "tensorboard"), name="", version="")
    metrics = {"test/acc": 0.9, "test/loss": 0.3, "val/acc_best": 0.91, "train_seconds": 12.5, "global_steps": 8}
    log_hparams(logger, cfg, metrics)
    logger.finalize("success")

    tb = EventMultiplexer()
    tb.AddRunsFromDirectory(str(run))
    tb.Reload()
    assert tb.Runs().keys() == {"tensorboard"}  # the HParams summary and the scalars: one run
    assert tb.Scalars("tensorboard", "time/train_seconds")[0].value == 12.5
    experiment, hparams = hparams_data(tb, "tensorboard")
    assert hparams["seed"].number_value == 3 and hparams["model"].string_value == "cnn"
    assert [i.name for i in experiment.hparam_infos if i.differs] == ["seed"] == [experiment.hparam_infos[0].name]


def test_finetune_table_reads_the_unfreeze_events_through_the_checkpoint_reader(tmp_path, capsys):
    """The plateau events come from each job's last.ckpt; an unreadable one is one paragraph, exit 1."""
    import torch
    from omegaconf import OmegaConf

    from mnist_lab.tools.finetune_table import main

    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    config = {"seed": 0, "data": {"labels_per_class": 10}, "finetune": {"checkpoint": "w.pt"}}
    OmegaConf.save(config, job / ".hydra" / "config.yaml")
    choices = {"finetune": "unfreeze_on_plateau", "data": "emnist_digits"}
    OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, job / ".hydra" / "hydra.yaml")
    (job / "metrics.json").write_text(json.dumps({"test/acc": 0.9, "train_seconds": 10.0}))
    (job / "checkpoints").mkdir()
    torch.save({"finetune": {"plateau_events": {"3": "conv2"}}}, job / "checkpoints" / "last.ckpt")
    assert main([str(tmp_path / "sweep")]) == 0
    assert "- emnist_digits, 10 labels/class, seed 0: conv2 at epoch 3" in capsys.readouterr().out

    (job / "checkpoints" / "last.ckpt").write_bytes(b"")  # an interrupted save
    with pytest.raises(SystemExit) as exit_status:
        main([str(tmp_path / "sweep")])
    error = capsys.readouterr().err
    assert exit_status.value.code == 1 and "last.ckpt" in error and "Traceback" not in error
