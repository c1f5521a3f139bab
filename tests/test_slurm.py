"""Sweeps and DDP on a real SLURM cluster started on this machine (tests/slurm_cluster.py).

Each test runs the README's `hydra/launcher=submitit_slurm` command line against the cluster,
with the CPU partition's one override (`hydra.launcher.gpus_per_node=0`) or the launcher's
default GPU request. The cluster starts once per test session; the tests skip, saying why,
where SLURM is not installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnist_lab import ROOT_DIR
from tests.conftest import TINY
from tests.slurm_cluster import PARTITION, Cluster, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

SMALL = [o for o in TINY if not o.startswith("trainer.limit_test_batches")] + ["trainer.limit_test_batches=1"]
# What a user on a CPU partition adds to the README's command: no GPU requested (and so one task per job).
CPU_PARTITION = ["hydra.launcher.gpus_per_node=0"]


def slurm_sweep(root: str, partition: str = PARTITION) -> list[str]:
    """The README's launcher arguments for this cluster: its partition, the venv activated in each job."""
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
    # Each SLURM job's own stdout/stderr, where the README says.
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
