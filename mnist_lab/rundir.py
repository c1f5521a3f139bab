"""The run directory: never overwrite an earlier run; `resume=<run dir>` continues one in place.

`python -m mnist_lab resume=<run dir> [overrides]` is rewritten (before Hydra starts) into
a run of the directory's saved `.hydra/config.yaml` with `hydra.run.dir=<run dir>` and
`ckpt_path=<run dir>/checkpoints/last.ckpt`. The saved config, not conf/ as it is today, is
what the checkpoint was trained with; Hydra's record of the resumed start goes to
`.hydra/resume-<time>/` so the original `.hydra/` files stay as they were.

A run directory holds `.hydra/` (config.yaml, hydra.yaml, overrides.yaml), `checkpoints/`
(best-*.ckpt, last.ckpt), `tensorboard/`, `figures/`, `environment.json`, `pretrained/`
(weights.pt and its card, where callbacks.ExportWeights exports: experiment=pretrain_mnist),
and `metrics.json` once it finished (`error.txt` instead when a sweep job failed).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from mnist_lab.errors import ConfigError
from mnist_lab.weights import LAST

SAVED_CONFIG = Path(".hydra") / "config.yaml"  # the run's composed config, inside its directory
RESUME_SUBDIR = ".hydra/resume-"  # + time: Hydra's record of each resumed start


def saved_config_of_resumed_run() -> str | None:
    """The saved config a resumed run was composed from (inside Hydra), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.output_subdir or "").startswith(RESUME_SUBDIR):
        return str(Path(hc.runtime.output_dir) / SAVED_CONFIG)
    return None


def check_output_dir(output_dir: Path, ckpt_path: str | None) -> None:
    """Refuse a directory that holds an earlier run, unless this is that run resuming."""
    if (output_dir / "metrics.json").exists():
        raise ConfigError(
            f"{output_dir} already holds a finished run (metrics.json): refusing to overwrite it. "
            "Choose another paths.output_dir / hydra.run.dir (the default makes a new time-stamped one per run); "
            f"to train it further, start a new run from its weights with ckpt_path={output_dir / 'checkpoints' / LAST}."
        )
    earlier = sorted((output_dir / "checkpoints").glob("*.ckpt"))
    resuming = ckpt_path is not None and Path(ckpt_path).resolve().parent == (output_dir / "checkpoints").resolve()
    if earlier and not resuming:
        raise ConfigError(
            f"{output_dir} holds checkpoints of an earlier, unfinished run ({earlier[0].name}): refusing to "
            f"overwrite them. Continue that run with `python -m mnist_lab resume={output_dir}`, or choose "
            "another output directory."
        )


def _quote(value: str) -> str:
    """A path as a Hydra override value (quoted: paths may hold '=', ',' or spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite `resume=<run dir> [overrides]` into the saved run's config in the same directory.

    Other command lines are returned unchanged, after refusing an explicit `hydra.run.dir` that
    already holds a run (Hydra would overwrite its `.hydra/` record before train() starts).
    """
    resume = [a for a in argv[1:] if a.startswith("resume=")]
    if not resume:
        for a in argv[1:]:
            if a.startswith("hydra.run.dir="):
                run_dir = Path(a.partition("=")[2].strip("'\""))
                if (run_dir / SAVED_CONFIG).exists():
                    raise ConfigError(
                        f"hydra.run.dir={run_dir} already holds a run (.hydra/config.yaml): a new run there would "
                        f"overwrite its record. Choose a new directory, or continue that run with resume={run_dir}."
                    )
        return argv
    if len(resume) > 1 or "-m" in argv or "--multirun" in argv:
        raise ConfigError(f"{' '.join(resume)}: resume takes exactly one run directory and cannot be part of a sweep.")
    run_dir = Path(resume[0].partition("=")[2].strip("'\"")).expanduser().resolve()
    config, last = run_dir / SAVED_CONFIG, run_dir / "checkpoints" / LAST
    if not config.is_file():
        raise ConfigError(
            f"resume={run_dir}: not a run directory (no .hydra/config.yaml there). "
            "Give the directory of a run started by `python -m mnist_lab`, e.g. runs/<date>/<time>."
        )
    if (run_dir / "metrics.json").exists():
        raise ConfigError(
            f"resume={run_dir}: that run finished (it has metrics.json), there is nothing to resume. To train it "
            f"further, start a new run from its weights with ckpt_path={last}."
        )
    if not last.is_file():
        raise ConfigError(
            f"resume={run_dir}: the run has no checkpoints/{LAST} (it stopped before its first checkpoint), "
            "so there is nothing to continue from. Start it again as a new run."
        )
    extra = [a for a in argv[1:] if not a.startswith("resume=")]
    return [
        argv[0],
        f"--config-path={run_dir / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir={_quote(str(run_dir))}",
        *resume_in_place(run_dir),
        *extra,
    ]


def resume_in_place(run_dir: Path) -> list[str]:
    """The overrides that continue the run in `run_dir` from its last.ckpt, keeping its first `.hydra/` record."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S.%f")
    return [
        f"hydra.output_subdir={_quote(RESUME_SUBDIR + stamp)}",
        f"ckpt_path={_quote(str(run_dir / 'checkpoints' / LAST))}",
    ]


def unfinished(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run that stopped before it finished, with a last.ckpt to continue from."""
    return (run_dir / "checkpoints" / LAST).is_file() and not (run_dir / "metrics.json").exists()
