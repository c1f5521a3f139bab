"""`mnist-lab [overrides]` / `python -m mnist_lab [overrides]`: compose the config, print it, train(cfg), print a summary.

`mnist-lab <command> [overrides]` runs one of the tools instead (mnist_lab/tools/): evaluate,
predict, export, report, finetune_table, strings_benchmark.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_lab import CONF_DIR
from mnist_lab.errors import failure_message, full_errors, user_error, user_errors

# command -> module of mnist_lab/tools/ whose main() runs it
TOOLS = ("evaluate", "predict", "export", "report", "finetune_table", "strings_benchmark", "pretrain", "serve")


class JobFailed(CompactHydraException):
    """A multirun job raised: its error is in its run directory; Hydra ends the sweep with exit 1."""


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from mnist_lab import console
    from mnist_lab.distributed import isolated_job
    from mnist_lab.errors import RunInterrupted
    from mnist_lab.train import train  # after Hydra parsed the command line: --help stays fast

    console.quiet_library_noise()
    console.print_config_tree(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        with user_errors(), isolated_job():
            try:
                metrics = train(cfg)
            except Exception as e:
                # Ctrl-C/SIGTERM: where the state is and the resume command; user_errors() then
                # prints the message and exits 130/143.
                if isinstance(user_error(e), RunInterrupted) and console.is_rank_zero():
                    console.print_interrupted(cfg.paths.output_dir)
                raise
        if console.is_rank_zero():
            console.print_run_summary(metrics, cfg.paths.output_dir)
        return metrics.get(cfg.get("optimized_metric", "val/acc_best"))
    try:
        with isolated_job():
            metrics = train(cfg)
    except Exception as e:
        # Recorded, then raised again: Hydra marks the job failed, runs the other jobs of the
        # sweep and exits 1 at the end; the Optuna sweeper records a failed trial.
        error_file = record_failure(cfg, e)
        if full_errors():
            raise
        print(f"\nError: {failure_message(e)}", file=sys.stderr)
        error = user_error(e)
        if error is not None and error.exit_code != 1:  # Ctrl-C/SIGTERM: stop the sweep too
            sys.exit(error.exit_code)
        sweep_dir = HydraConfig.get().sweep.dir  # Hydra skips its end-of-sweep callbacks after a failed job
        raise JobFailed(
            f"{failure_message(e)} (recorded in {error_file}; `mnist-lab report {sweep_dir}` tabulates every job)"
        ) from None
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


def record_failure(cfg: DictConfig, e: BaseException) -> Path:
    """Write error.txt (message, blank line, traceback) into the job's run directory."""
    from mnist_lab.files import write_atomic

    error_file = Path(cfg.paths.output_dir) / "error.txt"
    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    write_atomic(error_file, f"{failure_message(e)}\n\n{trace}")
    return error_file


def cli() -> None:
    """The `mnist-lab` command: a tool when the first argument names one, else training."""
    if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
        from importlib import import_module

        tool = sys.argv.pop(1)
        sys.argv[0] = f"mnist-lab {tool}"
        sys.exit(import_module(f"mnist_lab.tools.{tool}").main())
    if any(a.startswith(("resume=", "hydra.run.dir=")) for a in sys.argv[1:]):  # else skip importing torch
        from mnist_lab.rundir import resume_argv

        with user_errors():
            sys.argv = resume_argv(sys.argv)
    main()


if __name__ == "__main__":
    cli()
