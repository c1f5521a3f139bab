"""A run's network rebuilt from its checkpoint and config; Lightning's checkpoint writer, atomic.

What a checkpoint or weights file holds, finding and reading it: mnist_lab/weights.py. A training
checkpoint's network is rebuilt from the run's saved config, `<run>/checkpoints/x.ckpt` ->
`<run>/.hydra/config.yaml`, or, for a checkpoint copied out of its run, from the config
stored inside it; a weights file's, from its card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from hydra.utils import instantiate
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from mnist_lab.config.migrate import migrate
from mnist_lab.errors import CheckpointError
from mnist_lab.weights import (
    CONFIG_KEY,
    card_path,
    find_checkpoint,
    load_file,
    mismatch,
    net_state_dict,
    read_card,
    read_checkpoint,
    read_state_dict,
    save_atomic,
    shown,
)


def run_config(path: str | Path, checkpoint: dict[str, Any] | None = None) -> DictConfig:
    """The resolved `model` and `data` config of the run that wrote a checkpoint.

    Args:
        path: the checkpoint file.
        checkpoint: its loaded content, when already read (else it is read here).
    """
    path = Path(path)
    saved = path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not saved.is_file():  # a copied checkpoint: the config it carries (its data paths are absolute)
        checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
        if isinstance(checkpoint.get(CONFIG_KEY), dict):
            return migrate(OmegaConf.create(checkpoint[CONFIG_KEY]))
        raise CheckpointError(
            f"{path} does not store its config, and {saved} (where a run keeps it) does not exist. "
            "Keep the checkpoint inside its run directory (<run>/checkpoints/), or copy the run's "
            f".hydra/config.yaml to {saved}."
        )
    try:
        cfg = cast(DictConfig, OmegaConf.load(saved))
        # Only model and data are needed; paths.output_dir points at Hydra's runtime, absent here.
        return migrate(OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}))
    except (OmegaConfBaseException, AttributeError, ValueError) as e:
        raise CheckpointError(
            f"The run config {saved} of {path} has no usable model/data sections ({e}). "
            "Restore the run's original .hydra/config.yaml."
        ) from e


def load_net(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """Rebuild a run's network with its trained weights, in eval mode on the CPU; return it and its config.

    Args:
        path: a checkpoint file, a run directory (its best checkpoint is used), or a weights
            file with a card beside it (a run's exported weights, the bundled ones).
    """
    path = find_checkpoint(path)
    if card_path(path).is_file():  # a state_dict whose card holds its model and data config
        card = read_card(path)
        state, cfg = read_state_dict(path, "ckpt_path"), OmegaConf.create({k: card[k] for k in ("model", "data")})
    else:
        checkpoint = read_checkpoint(path)
        state = net_state_dict(checkpoint, path)
        cfg = run_config(path, checkpoint)
    try:
        net: nn.Module = instantiate(cfg.model)
    except Exception as e:  # a stale _target_ or argument: the config no longer matches the code
        raise CheckpointError(
            f"The model config of {path} ({cfg.model.get('_target_')}) no longer builds: {e}. "
            "Check out the code version that trained it (environment.json holds the git commit)."
        ) from e
    problems = mismatch(net, state)
    if problems:
        raise CheckpointError(
            f"The weights in {path} do not fit the network its config describes ({cfg.model._target_}): "
            f"{shown(problems)}. The checkpoint and the config come from different runs; keep the checkpoint "
            "in its own run directory."
        )
    net.load_state_dict(state)
    return net.eval(), cfg


def describe_checkpoint(path: Path) -> str:
    """One sentence on a checkpoint that a failed run leaves behind."""
    if not path.exists():
        return "No checkpoint had been written yet."
    try:
        step = load_file(path, "ckpt_path").get("global_step")
    except Exception:  # a description only: the file's own problems are reported when it is used
        step = "?"
    return f"The last good checkpoint, {path} (step {step}), is kept."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing local files with save_atomic (Lightning's writes in place)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote paths: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomic(checkpoint, path)
