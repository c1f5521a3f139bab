"""What a run shows on the terminal: the config, the end-of-run summary, and less library noise."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import rich
import rich.box
import rich.markup
import rich.panel
import rich.syntax
import rich.table
import rich.tree
from omegaconf import DictConfig, OmegaConf


def print_config_tree(cfg: DictConfig, resolve: bool = True) -> None:
    """Print the composed config as a rich tree, one branch per top-level group."""
    tree = rich.tree.Tree("config", style="bold")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold cyan")
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, DictConfig) else repr(value)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml"))
    rich.print(tree)


# ----- the end of a run ---------------------------------------------------------------------
def _shown(path: str | Path) -> str:
    """A path relative to the current directory when it lies below it (shorter to copy), else as it is."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02.0f} s" if minutes else f"{secs:.1f} s"


def _print_where(rows: list[tuple[str, str]], title: str, commands: list[str]) -> None:
    # Outside the panel and soft-wrapped: a long path stays on one line, to be copied as printed.
    console = rich.get_console()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        console.print(f"[bold]{label:<{width}}[/]  {rich.markup.escape(value)}", soft_wrap=True, highlight=False)
    console.print(f"[bold]{title}[/]")
    for command in commands:
        console.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)


def print_run_summary(metrics: dict[str, Any], run_dir: str | Path) -> None:
    """The end of a finished run: test and best validation scores, time, where it is, what to run next."""
    table = rich.table.Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    if metrics.get("test/acc") is not None:
        table.add_row("test/acc", f"{metrics['test/acc']:.4f}   test/loss {metrics['test/loss']:.4f}")
    else:
        table.add_row("test/acc", "not tested (test=false)")
    if metrics.get("val/acc_best") is not None:
        best_epoch, epochs = metrics.get("best_epoch"), metrics["epochs"]
        # Lightning's epoch number, from 0, as in the progress bar and the best-epochNNN name.
        at = f"   epoch {best_epoch} of {epochs} (counted from 0)" if best_epoch is not None else ""
        table.add_row("val/acc best", f"{metrics['val/acc_best']:.4f}{at}")
    test_time = f" (test {_duration(metrics['test_seconds'])})" if metrics.get("test_seconds") is not None else ""
    table.add_row(
        "trained",
        f"{metrics['epochs']} epoch{'s' * (metrics['epochs'] != 1)}, {metrics['global_steps']:,} steps "
        f"in {_duration(metrics['train_seconds'])}{test_time}",
    )
    rich.print(rich.panel.Panel(table, title="run finished", title_align="left", box=rich.box.ROUNDED, expand=False))
    run, best = _shown(run_dir), metrics.get("best_checkpoint")
    commands = [
        f"mnist-lab evaluate ckpt_path={run}",
        f"mnist-lab predict ckpt_path={run} inputs=<image files or a folder>",
        f"mnist-lab export ckpt_path={run} format=onnx",
    ]
    if (Path(run_dir) / "tensorboard").is_dir():
        commands.insert(0, f"tensorboard --logdir {run}/tensorboard")
    where = [
        ("run directory", run),
        ("best checkpoint", _shown(best) if best else "none (the last weights were tested)"),
    ]
    _print_where(where, "next", commands)


def print_interrupted(run_dir: str | Path) -> None:
    """The end of a run that Ctrl-C or SIGTERM stopped: where its state is and how to continue it."""
    run = _shown(run_dir)
    rich.print(
        rich.panel.Panel(
            "stopped by Ctrl-C or SIGTERM; its full state is saved",
            title="run interrupted",
            title_align="left",
            expand=False,
        )
    )
    where = [("run directory", run), ("state", _shown(Path(run_dir) / "checkpoints" / "last.ckpt"))]
    _print_where(where, "continue it with", [f"mnist-lab resume={run}"])


# ----- library noise ------------------------------------------------------------------------
class _Drop(logging.Filter):
    """Drops the records of one logger whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


# Lightning's rank-zero info lines that say nothing about this run (checked on Lightning 2.6):
_LIGHTNING_NOISE = _Drop(
    (
        # An advertisement, printed on every fit when the litlogger package is not installed.
        "💡 Tip: For seamless cloud logging",
        # No TPU here; on a machine with one, the line ("TPU available: True") stays.
        "TPU available: False",
        # Our LayerSummary (conf/callbacks/default.yaml) replaces the default summary on purpose.
        "Trainer already configured with model summary callbacks",
    )
)


def quiet_library_noise() -> None:
    """Silence library messages that are noise in every run, each at its source; the rest stays.

    Called at the start of `mnist-lab` training (after Hydra configured logging; idempotent).
    """
    # Filtered at the logger, so the lines go neither to the terminal nor to <run>/__main__.log:
    # none of them is about the run. "GPU available: ..., used: ..." is kept.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_LIGHTNING_NOISE)
    # torch (2.14 here) deprecates _pytree.LeafSpec, and Lightning 2.6's own utilities/_pytree.py:21
    # still builds one when it collects logged values: a FutureWarning for Lightning, not for us.
    warnings.filterwarnings(
        "ignore",
        message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )


def is_rank_zero() -> bool:
    """True in the process that reports a run: the only one, or DDP's rank 0."""
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0  # Lightning sets it from the environment, then its strategy
