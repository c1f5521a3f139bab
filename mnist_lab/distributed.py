"""Multi-process training: Lightning's DDP with extra ranks that re-run *this job*, not the command line.

Lightning's `ddp` starts ranks 1..N-1 of a node by re-running `sys.argv`. In a Hydra multirun
that is the whole sweep (every rank would start every job), and in a joblib or submitit worker
it is the worker's own command. `DDPStrategy` below starts `python -m mnist_lab <this job's
overrides> hydra.run.dir=<this job's run dir>` instead, so single runs, sweeps and every
launcher behave the same. Under SLURM (one task per GPU) or torchrun the processes already
exist and nothing is started. `ddp_spawn` was the other candidate: it pickles the trainer into
fresh processes and hands back only some state (the epoch and step counters and our callbacks'
records stay in the children), and it cannot run one task per GPU under SLURM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from lightning_fabric.utilities.distributed import _set_num_threads_if_needed
from pytorch_lightning.strategies import DDPStrategy as _LightningDDP
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from mnist_lab.errors import ConfigError

# What Lightning's launcher sets in os.environ for the ranks it starts; a job restores them so
# the next job of a sweep, in the same process, starts its own ranks instead of waiting for old ones.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_children: list[subprocess.Popen] = []


class DDPStrategy(_LightningDDP):
    """Lightning's DDPStrategy whose extra local ranks run this Hydra job's own overrides."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning advises sync_dist=True for every epoch-level log under DDP. The val/test
        # metrics are torchmetrics objects, already synchronised by compute(); the others
        # (epoch time, frozen groups) are rank 0's own record.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(")

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = _JobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


class _JobLauncher(_SubprocessScriptLauncher):
    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        # Lightning's own, without its process observer: that SIGKILLs this process as soon as
        # a rank exits non-zero, which in a sweep kills every later job when one job fails on
        # all ranks. Here the ranks fail together, rank 0 records the error, and isolated_job()
        # reaps (or kills) the other ranks before the next job.
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        # Lightning's own, with the command of this job (Lightning's re-runs sys.argv).
        self._check_can_spawn_children()
        self.procs = []
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            command, cwd = job_command(local_rank)
            self.procs.append(subprocess.Popen(command, env=env, cwd=cwd))
        _children.extend(self.procs)


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
    # The job's own primary config: conf/, or a resumed run's saved .hydra/ (mnist_lab/resume.py).
    main = next((s for s in hc.runtime.config_sources if s.provider == "main" and s.schema == "file"), None)
    command = [
        sys.executable,
        "-m",
        "mnist_lab",
        *([f"--config-path={main.path}"] if main is not None else []),
        f"--config-name={hc.job.config_name}",
        *hc.overrides.task,
        # "++": rank 0 made this directory already; `python -m mnist_lab` refuses a plain
        # hydra.run.dir= that holds a run (mnist_lab/resume.py), which is right for users only.
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
