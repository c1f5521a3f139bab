"""`python -m mnist_lab [overrides]`: compose the config, print it, train(cfg)."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_lab import CONF_DIR
from mnist_lab.errors import UserError


class JobFailed(CompactHydraException):
    """A multirun job raised: its error is in its run directory; Hydra ends the sweep with exit 1."""


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from mnist_lab.distributed import isolated_job
    from mnist_lab.train import train  # after Hydra parsed the command line: --help stays fast
    from mnist_lab.utils import print_config_tree

    print_config_tree(cfg)
    try:
        with isolated_job():
            metrics = train(cfg)
    except Exception as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Recorded, then raised again: Hydra marks the job failed, runs the other jobs of
            # the sweep and exits 1 at the end; the Optuna sweeper records a failed trial.
            error_file = record_failure(cfg, e)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"\nError: {failure_message(e)}", file=sys.stderr)
            if getattr(user_error(e), "exit_code", 1) != 1:  # Ctrl-C/SIGTERM: stop the sweep too
                sys.exit(user_error(e).exit_code)
            raise JobFailed(f"{failure_message(e)} (recorded in {error_file})") from None
        if user_error(e) is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"\nError: {user_error(e)}", file=sys.stderr)
        sys.exit(getattr(user_error(e), "exit_code", 1))  # 130/143 after Ctrl-C/SIGTERM saved a checkpoint
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


def user_error(e: BaseException | None) -> UserError | None:
    """The UserError behind e, also when hydra.utils.instantiate wrapped it, or None."""
    while e is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


def failure_message(e: BaseException) -> str:
    """A user error's own paragraph; any other exception with its type."""
    return str(user_error(e) or f"{type(e).__name__}: {e}")


def record_failure(cfg: DictConfig, e: BaseException) -> Path:
    """Write error.txt (message, blank line, traceback) into the job's run directory."""
    from mnist_lab.utils import write_atomic

    error_file = Path(cfg.paths.output_dir) / "error.txt"
    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    write_atomic(error_file, f"{failure_message(e)}\n\n{trace}")
    return error_file


def cli() -> None:
    """`python -m mnist_lab`; `resume=<run dir>` first becomes that run's saved config (mnist_lab/resume.py)."""
    if any(a.startswith(("resume=", "hydra.run.dir=")) for a in sys.argv[1:]):  # else skip importing torch
        from mnist_lab.resume import resume_argv

        try:
            sys.argv = resume_argv(sys.argv)
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(1)
    main()


if __name__ == "__main__":
    cli()
