"""Sweeps on SLURM: Hydra's submitit launcher, with requeued jobs resuming and DDP ranks kept apart.

`conf/hydra/launcher/submitit_slurm.yaml` names `SlurmLauncher` below (Hydra takes launchers
only from the hydra_plugins package). It adds two things to hydra-submitit-launcher's, both by
appending overrides to the job before the stock launcher runs it:

- **A requeued job resumes.** SLURM restarts a job that was preempted, requeued (`scontrol
  requeue`) or resubmitted by submitit at its time limit (`max_num_timeout`) as the same job,
  in the same run directory, with SLURM_RESTART_COUNT > 0. The SIGTERM that stopped it had
  saved `checkpoints/last.ckpt` (mnist_lab.callbacks.Resumable); the restarted job continues
  from it exactly as `mnist-lab resume=<run dir>` would, instead of refusing the directory.
- **Rank 0 alone writes the run directory.** With several tasks per job (DDP, one rank per
  task), every task runs the Hydra job; ranks > 0 write no `.hydra/` record and log to
  `ddp_rank<N>.log`, as the ranks `mnist_lab.distributed` starts itself do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher
from mnist_lab.rundir import resume_in_place, unfinished

log = logging.getLogger(__name__)


def restarts() -> int:
    """How often SLURM has restarted this job (0 outside SLURM and on a job's first start)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


class SlurmLauncher(HydraSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher; requeued jobs resume from their own last.ckpt."""

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[Any, Any],
    ) -> Any:
        import submitit
        from hydra.core.singleton import Singleton

        Singleton.set_state(singleton_state)  # as the stock launcher does first: the config loader needs it
        rank = submitit.JobEnvironment().global_rank
        extra = [] if rank == 0 else ["hydra.output_subdir=null", f"hydra.job.name=ddp_rank{rank}"]
        if restarts():
            run_dir = self.job_dir(sweep_overrides, job_num)
            if unfinished(run_dir):
                log.warning(
                    "SLURM restarted this job (restart %d): resuming %s from its last.ckpt", restarts(), run_dir
                )
                extra += resume_in_place(run_dir)
        return super().__call__([*sweep_overrides, *extra], job_dir_key, job_num, job_id, singleton_state)

    def job_dir(self, sweep_overrides: list[str], job_num: int) -> Path:
        """The run directory of job `job_num` of the sweep (hydra.sweep.dir / hydra.sweep.subdir)."""
        assert self.hydra_context is not None and self.config is not None  # set by Hydra's setup()
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = job_num  # the subdir is ${hydra.job.num} by default
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
