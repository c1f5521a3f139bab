"""Interrupted runs: atomic checkpoints, save-on-signal, exact resume in the same run directory.

`python -m mnist_lab resume=<run dir> [overrides]` is rewritten (before Hydra starts) into
a run of the directory's saved `.hydra/config.yaml` with `hydra.run.dir=<run dir>` and
`ckpt_path=<run dir>/checkpoints/last.ckpt`. The saved config, not conf/ as it is today, is
what the checkpoint was trained with; Hydra's record of the resumed start goes to
`.hydra/resume-<time>/` so the original `.hydra/` files stay as they were.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint

from mnist_lab.errors import ConfigError, UserError
from mnist_lab.utils import atomic_file

LAST = "last.ckpt"


class RunInterrupted(UserError):
    """SIGINT or SIGTERM stopped training; the state was saved to checkpoints/last.ckpt."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, then os.replace onto it.

    Lightning's TorchCheckpointIO writes the target file in place, so a kill during the
    write (a 1.7 MB CNN checkpoint takes ~10 ms, a large model seconds) leaves a truncated
    file that torch.load cannot read. A rename is atomic on POSIX: the file is the old one
    or the new one, never half of each.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote paths: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)


def _rng_state() -> dict[str, Any]:
    """Every global RNG as tensors and plain numbers: loadable with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def parameters_finite(module: torch.nn.Module) -> bool:
    """True when every parameter is finite (one host sync for the whole model)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class Resumable(Checkpoint):
    """Keeps a run resumable: checkpoints/last.ckpt after every validation, every N steps, at the end and on signals.

    Lightning saves the model, optimizer, scheduler, loop counters, callback states and the
    train loader's position (`TensorBatches.state_dict`); this adds the global RNG states
    (dropout and augmentation draw from them) so that a resumed run draws the same numbers.
    A signal only sets a flag: the checkpoint is written at the end of the current training
    batch or validation, where Lightning's loop state is consistent (where ModelCheckpoint
    saves), then training stops with RunInterrupted. A second Ctrl-C stops at once. Weights
    that are NaN/inf are never written: the last good checkpoint stays.

    A `Checkpoint` subclass because Lightning runs those after all other callbacks, in list
    order: after validation, this saves once ModelCheckpoint has recorded the epoch's score
    (ModelCheckpoint itself rewrites last.ckpt only when val/acc improved).

    Args:
        dirpath: the run's checkpoints/ directory.
        every_n_train_steps: also write last.ckpt every N optimizer steps (None: not mid-epoch).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.signum: int | None = None
        self.train_seconds_before = 0.0  # restored from the checkpoint on resume
        self._fit_start = time.perf_counter()
        self._rng_to_restore: dict[str, Any] | None = None
        self._previous_handlers: dict[int, Any] = {}

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def train_seconds(self) -> float:
        """Training wall-clock seconds of this run, earlier (interrupted) parts included."""
        return self.train_seconds_before + time.perf_counter() - self._fit_start

    # -- state in every checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state(), "train_seconds": self.train_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict["rng"]
        self.train_seconds_before = state_dict["train_seconds"]

    # -- signals -------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning restored the checkpoint and before the first batch draws a number.
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        # After Lightning installed its own SIGTERM handler (it restores what it found at the
        # end of fit). Only the main thread may set handlers; with several processes (DDP)
        # Lightning's SIGTERM handling, which tells the other ranks, is kept.
        if threading.current_thread() is threading.main_thread() and trainer.world_size == 1:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self._handler)
            if trainer.received_sigterm:  # arrived while Lightning restored the checkpoint
                self.signum = signal.SIGTERM

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The final training state, also when the last epoch did not improve val/acc (then
        # ModelCheckpoint keeps the older last.ckpt): a kill during the test resumes to the test.
        self._restore_handlers()
        self._save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # -- saving --------------------------------------------------------------------------
    def check_finite(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise NonFiniteLossError when the weights are NaN/inf (before anything saves them)."""
        from mnist_lab.module import NonFiniteLossError

        if not parameters_finite(pl_module):
            raise NonFiniteLossError(
                f"The weights became NaN or infinite by step {trainer.global_step} (epoch {trainer.current_epoch}): "
                "the loss diverged. The usual cause is a learning rate that is too high: lower optimizer.lr "
                "(or the scheduler's max_lr) and start again."
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        periodic = self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0
        if periodic or self.signum is not None:
            self._save(trainer, pl_module)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write last.ckpt; stop with RunInterrupted when a signal asked for it."""
        self.check_finite(trainer, pl_module)
        trainer.save_checkpoint(self.last_path, weights_only=False)
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise RunInterrupted(
                f"{name} received: training stopped at step {trainer.global_step} (epoch {trainer.current_epoch}) "
                f"and its full state was saved to {self.last_path}. Continue it with "
                f"`python -m mnist_lab resume={self.dirpath.parent}`.",
                self.signum,
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":  # ModelCheckpoint saves after this validation: check first
            self.check_finite(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_finite(trainer, pl_module)


def describe_checkpoint(path: Path) -> str:
    """One sentence on a checkpoint that a failed run leaves behind."""
    if not path.exists():
        return "No checkpoint had been written yet."
    try:
        step = torch.load(path, map_location="cpu", weights_only=True).get("global_step")
    except Exception:  # a description only: the file's own problems are reported when it is used
        step = "?"
    return f"The last good checkpoint, {path} (step {step}), is kept."


# ---------------------------------------------------------------------------------------
# The run directory: never overwrite an earlier run; `resume=<run dir>` reuses it in place.


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
                if (run_dir / ".hydra" / "config.yaml").exists():
                    raise ConfigError(
                        f"hydra.run.dir={run_dir} already holds a run (.hydra/config.yaml): a new run there would "
                        f"overwrite its record. Choose a new directory, or continue that run with resume={run_dir}."
                    )
        return argv
    if len(resume) > 1 or "-m" in argv or "--multirun" in argv:
        raise ConfigError(f"{' '.join(resume)}: resume takes exactly one run directory and cannot be part of a sweep.")
    run_dir = Path(resume[0].partition("=")[2].strip("'\"")).expanduser().resolve()
    config, last = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / LAST
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
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S.%f")
    return [
        argv[0],
        f"--config-path={run_dir / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir={_quote(str(run_dir))}",
        f"hydra.output_subdir={_quote(f'.hydra/resume-{stamp}')}",
        f"ckpt_path={_quote(str(last))}",
        *extra,
    ]
