"""Multi-process training: Lightning's DDP with extra ranks that re-run *this job*, not the command line.

Lightning's `ddp` starts ranks 1..N-1 of a node by re-running `sys.argv`. In a Hydra multirun
that is the whole sweep (every rank would start every job), and in a joblib or submitit worker
it is the worker's own command. `DDPStrategy` below starts `python -m mnist_lab <this job's
overrides> hydra.run.dir=<this job's run dir>` instead, so single runs, sweeps and every
launcher behave the same. Under SLURM (one task per GPU) or torchrun the processes already
exist and nothing is started. Only Lightning's public API does it: the strategy's
`cluster_environment` argument, a `ClusterEnvironment` that tells Lightning the processes exist
(so its launcher starts none), and the strategy's `setup_environment()`, which starts them just
before the process group needs them. `ddp_spawn` was the other candidate: it pickles the trainer into
fresh processes and hands back only some state (the epoch and step counters and our callbacks'
records stay in the children), and it cannot run one task per GPU under SLURM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pytorch_lightning.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from pytorch_lightning.strategies import DDPStrategy as LightningDDPStrategy

from mnist_lab.errors import ConfigError

# What start_ranks() sets in os.environ, as Lightning's own launcher does; a job restores them so
# the next job of a sweep, in the same process, starts its own ranks instead of waiting for old ones.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_children: list[subprocess.Popen] = []
# The environments the Trainer detects before it falls back to its local one (Lightning 2.6's
# accelerator connector): their processes exist before the job starts. tests/test_ddp.py fails
# when Lightning exports another.
EXTERNAL_ENVIRONMENTS = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)


class JobEnvironment(LightningEnvironment):
    """Lightning's local environment, except that `DDPStrategy`, not Lightning, starts the extra ranks."""

    @property
    def creates_processes_externally(self) -> bool:
        # True: Lightning's launcher starts no ranks (it would re-run sys.argv) and watches none
        # (its process observer SIGKILLs this process when a rank fails, which in a sweep kills
        # every later job). Here the ranks fail together, rank 0 records the error, and
        # isolated_job() reaps (or kills) the other ranks before the next job.
        return True


class DDPStrategy(LightningDDPStrategy):
    """Lightning's DDPStrategy whose extra local ranks run this Hydra job's own overrides.

    Args:
        process_group_backend: `gloo` (CPU) or `nccl` (GPU); null: Lightning's choice for the device.
        find_unused_parameters: passed to torch's DistributedDataParallel.
    """

    def __init__(self, process_group_backend: str | None = None, find_unused_parameters: bool = False) -> None:
        super().__init__(
            cluster_environment=job_environment(),
            process_group_backend=process_group_backend,
            find_unused_parameters=find_unused_parameters,
        )
        # Lightning advises sync_dist=True for every epoch-level log under DDP. The val/test
        # metrics are torchmetrics objects, already synchronised by compute(); the others
        # (epoch time, frozen groups) are rank 0's own record.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(")

    def setup_environment(self) -> None:
        # Before super(): its process group waits for every rank. Once per job: start_ranks()
        # sets LOCAL_RANK (trainer.test finds it), isolated_job() removes it for the next job.
        if isinstance(self.cluster_environment, JobEnvironment) and "LOCAL_RANK" not in os.environ:
            start_ranks(self.cluster_environment, self.num_processes, self.num_nodes)
        super().setup_environment()


def job_environment() -> JobEnvironment | None:
    """JobEnvironment where Lightning would start the ranks itself, else None (the Trainer detects the environment).

    SLURM, torchrun & co. and a process with LOCAL_RANK set (one of the ranks start_ranks() started)
    have every process already; only a plain local start would have Lightning re-run sys.argv.
    """
    if "LOCAL_RANK" in os.environ or any(environment.detect() for environment in EXTERNAL_ENVIRONMENTS):
        return None
    return JobEnvironment()


def start_ranks(environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
    """Start local ranks 1..num_processes-1 of this node, each running this Hydra job (job_command)."""
    commands = [job_command(local_rank) for local_rank in range(1, num_processes)]  # ConfigError before any start
    # The variables Lightning's launcher sets (and LightningEnvironment reads in every rank).
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    os.environ["NODE_RANK"] = str(environment.node_rank())
    os.environ["LOCAL_RANK"] = "0"
    os.environ["WORLD_SIZE"] = str(num_processes * num_nodes)
    for local_rank, (command, cwd) in enumerate(commands, start=1):
        _children.append(subprocess.Popen(command, env={**os.environ, "LOCAL_RANK": str(local_rank)}, cwd=cwd))


def job_command(local_rank: int) -> tuple[list[str], str]:
    """The command line and directory that run the current Hydra job as one more DDP rank."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigError(
            "A DDP trainer (trainer=ddp or trainer=ddp_cpu) starts its extra processes by re-running the "
            "job through `python -m mnist_lab`, but this train() call does not come from it. Run it from the "
            "command line, start the processes yourself with torchrun, or use trainer=cpu / trainer=gpu."
        )
    hc = HydraConfig.get()
    # The job's own primary config: conf/, or a resumed run's saved .hydra/ (mnist_lab/rundir.py).
    # runtime.config_sources is a field of Hydra's config schema (hydra.conf.RuntimeConf), like
    # runtime.output_dir; tests/test_ddp.py fails if it stops naming the primary config directory.
    main = next((s for s in hc.runtime.config_sources if s.provider == "main" and s.schema == "file"), None)
    command = [
        sys.executable,
        "-m",
        "mnist_lab",
        *([f"--config-path={main.path}"] if main is not None else []),
        f"--config-name={hc.job.config_name}",
        *hc.overrides.task,
        # "++": rank 0 made this directory already; `python -m mnist_lab` refuses a plain
        # hydra.run.dir= that holds a run (rundir.resume_argv), which is right for users only.
        f'++hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",  # rank 0 already wrote .hydra/
        f"hydra.job.name=ddp_rank{local_rank}",
    ]
    return command, hc.runtime.cwd


@contextmanager
def isolated_job() -> Iterator[None]:
    """Run one job so that the next one in the same process starts from a clean slate.

    Waits for the DDP ranks this job started, destroys its process group and restores the
    launch variables, so the next job of a sweep starts ranks of its own.
    """
    saved = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    failed = True
    try:
        yield
        failed = False
    finally:
        for proc in _children:
            try:  # they finish with rank 0; a failed job's ranks could wait in a collective for 30 min
                proc.wait(timeout=5 if failed else 600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _children.clear()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
