"""Sweeps and DDP on a real SLURM cluster started on this machine (tests/slurm_cluster.py).

Each test runs the documented `hydra/launcher=submitit_slurm` command line (docs/sweeps.md) against the cluster,
with the CPU partition's one override (`hydra.launcher.gpus_per_node=0`) or the launcher's
default GPU request. The cluster starts once per test session; the tests skip, saying why,
where SLURM is not installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from mnist_lab import ROOT_DIR
from tests.conftest import TINY
from tests.slurm_cluster import PARTITION, Cluster, missing
from tests.test_ddp import metrics_tested_in_one_process

pytestmark = [pytest.mark.skipif(missing() is not None, reason=missing() or ""), pytest.mark.slow]

SMALL = [o for o in TINY if not o.startswith("trainer.limit_test_batches")] + ["trainer.limit_test_batches=1"]
# What a user on a CPU partition adds to the documented command: no GPU requested (and so one task per job).
CPU_PARTITION = ["hydra.launcher.gpus_per_node=0"]


def slurm_sweep(root: str, partition: str = PARTITION) -> list[str]:
    """The documented launcher arguments for this cluster: its partition, the venv activated in each job."""
    return [
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.partition={partition}",
        f"hydra.launcher.setup=['. {root}/.venv/bin/activate']" if (ROOT_DIR / ".venv").is_dir() else "",
        # Small jobs: both fit on the 2-core node at once.
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
    ]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    yield c
    c.stop()


def run_cli(cluster: Cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_lab", *[a for a in args if a]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster.env,
        cwd=ROOT_DIR,
    )


def test_a_sweep_on_a_cpu_partition_runs_every_job_and_prints_its_report(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        cluster, "-m", *slurm_sweep(str(ROOT_DIR)), *CPU_PARTITION, *SMALL, "model=cnn,mlp", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, model in (("0", "cnn"), ("1", "mlp")):
        run = sweep / job
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and 0.0 < metrics["test/acc"] <= 1.0
        assert (run / "__main__.log").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert f"model: {model}" in (run / ".hydra" / "overrides.yaml").read_text().replace("- model=", "model: ")
    # Each SLURM job's own stdout/stderr, where docs/sweeps.md says.
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, sorted(p.name for p in (sweep / ".submitit").rglob("*"))
    assert "| 0 | cnn | ok |" in result.stdout and "| 1 | mlp | ok |" in result.stdout  # the sweep report


def test_a_failing_slurm_job_is_recorded_and_the_other_finishes(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        cluster,
        "-m",
        *slurm_sweep(str(ROOT_DIR)),
        *CPU_PARTITION,
        *SMALL,
        "data.batch_size=64,-4",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "data.batch_size=-4" in (sweep / "1" / "error.txt").read_text()
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epochs"] == 1
    assert not (sweep / "1" / "metrics.json").exists()
    assert f"`mnist-lab report {sweep}` tabulates every job" in result.stderr


def test_the_default_gpu_request_is_scheduled_as_on_a_gpu_cluster(cluster, tmp_path):
    # The launcher's defaults (one GPU and one task per job) against the node's generic gpu
    # resource: SLURM accepts and schedules the job, which trains where torch finds a device.
    sweep = tmp_path / "sweep"
    result = run_cli(cluster, "-m", *slurm_sweep(str(ROOT_DIR)), *SMALL, "model=mlp", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epochs"] == 1
    (batch,) = (sweep / ".submitit").glob("*/*_submission.sh")
    script = batch.read_text()
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --ntasks-per-node=1" in script


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def released(cluster: Cluster, job: str) -> bool:
    """True once `job` runs again (or has ended); while it is held pending, moves its begin time to now."""
    state = cluster.squeue("-j", job, "-o", "%t").strip()
    if state == "PD":
        cluster.scontrol("update", f"JobId={job}", "StartTime=now")
    return state in ("R", "")


# How job 0 is stopped, and what its SLURM log then says. "requeue": as a preemption, SLURM's
# SIGTERM (the run saves last.ckpt at that step). "time limit": the signal SLURM sends
# signal_delay_s before a job's limit, on which submitit requeues the job (it resumes from the
# last.ckpt of its latest validation). Sent here long before the limit, submitit logs the job as
# preempted rather than timed-out: the same requeue, not counted against max_num_timeout.
STOPS = {
    "requeue": (("scontrol", "requeue"), "SIGTERM received: training stopped at step"),
    "time limit": (("scancel", "--signal=USR2"), "Caught signal SIGUSR2"),
}


@pytest.mark.timeout(660)  # its own waits end first, with the cluster's account of the job
@pytest.mark.parametrize("stop", STOPS)
def test_a_stopped_job_resumes_from_its_own_last_checkpoint_and_ends_as_an_uninterrupted_one(cluster, tmp_path, stop):
    # Two jobs of the same config; job 0 is stopped during its second epoch, job 1 runs
    # through. SLURM restarts job 0, which resumes in its own directory to the same metrics
    # and weights as job 1.
    sweep = tmp_path / "sweep"
    longer = [o for o in SMALL if not o.startswith(("data.train_size", "trainer.max_epochs"))]
    command = [sys.executable, "-m", "mnist_lab", "-m", *slurm_sweep(str(ROOT_DIR)), *CPU_PARTITION, *longer]
    command += ["data.train_size=3072", "trainer.max_epochs=3", "logger=none", "seed=0,0", f"hydra.sweep.dir={sweep}"]
    sweep_process = subprocess.Popen(
        [c for c in command if c],
        env=cluster.env,
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = ""
    try:
        wait_for(lambda: (sweep / "0" / "checkpoints" / "last.ckpt").is_file(), 240, "job 0's first last.ckpt")
        (job,) = [j for j in cluster.squeue("-o", "%i").split() if j.endswith("_0")]
        command, logged = STOPS[stop]
        assert subprocess.run([*command, job], env=cluster.env).returncode == 0
        wait_for(lambda: cluster.squeue("-j", job, "-o", "%t").strip() != "R", 90, "the stopped job to leave the node")
        # SLURM holds a requeued batch job for a while before it may start again (a begin time
        # set once the requeue completes); release it until it runs.
        wait_for(lambda: released(cluster, job), 120, "the requeued job to start again")
        out, err = sweep_process.communicate(timeout=180)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        raise AssertionError(f"{e}\n{cluster.diagnose(job, sweep)}") from e
    finally:
        sweep_process.kill()
    assert sweep_process.returncode == 0, err[-3000:]
    interrupted, through = (json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1"))
    wall_clock = {"train_seconds", "test_seconds", "epoch_seconds", "val_seconds", "best_checkpoint"}
    assert {k: v for k, v in interrupted.items() if k not in wall_clock} == {
        k: v for k, v in through.items() if k not in wall_clock
    }
    assert interrupted["epochs"] == 3
    # The SLURM job's own log (stderr) shows the stop and the resumption; the run's log shows
    # Lightning restoring the checkpoint.
    (slurm_log,) = (sweep / ".submitit").glob("*_0/*_0_log.err")
    assert logged in slurm_log.read_text()
    assert f"SLURM restarted this job (restart 1): resuming {sweep / '0'} from its last.ckpt" in slurm_log.read_text()
    assert (
        f"Restoring states from the checkpoint path at {sweep / '0' / 'checkpoints' / 'last.ckpt'}"
        in (sweep / "0" / "__main__.log").read_text()
    )
    assert list((sweep / "0" / ".hydra").glob("resume-*")), "the resumed start's record is kept apart"
    weights = [torch.load(sweep / j / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for j in ("0", "1")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


def test_ddp_as_slurm_runs_it_one_rank_per_task_tests_to_the_single_process_accuracy(cluster, tmp_path):
    # Two SLURM tasks of one job, one DDP rank each (gloo on the CPU), joined through Lightning's
    # SLURM environment: mnist_lab starts no processes of its own.
    sweep = tmp_path / "sweep"
    tiny = [o for o in SMALL if not o.startswith(("trainer.limit_test_batches", "optimizer.lr"))]
    result = run_cli(
        cluster,
        "-m",
        *slurm_sweep(str(ROOT_DIR)),
        *CPU_PARTITION,
        "hydra.launcher.tasks_per_node=2",
        *tiny,
        "data.eval_batch_size=1000",  # the whole test set: limit_test_batches would count per rank
        "trainer=ddp_cpu",
        "logger=none",
        "optimizer.lr=0.05",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = sweep / "0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_steps"] == 8  # 1,024 images / 2 ranks / batch 64: each rank half an epoch
    # Each rank's job log is its own: rank 0's the run's __main__.log, rank 1's ddp_rank1.log.
    main_log, rank1_log = (run / "__main__.log").read_text(), (run / "ddp_rank1.log").read_text()
    assert main_log.count("Job completed successfully") == rank1_log.count("Job completed successfully") == 1

    # The same checkpoint tested in this one process gives exactly the same accuracy.
    single = metrics_tested_in_one_process(run, metrics["best_checkpoint"], tmp_path / "single")
    assert single["test/acc"] == metrics["test/acc"]
