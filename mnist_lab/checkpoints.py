"""Rebuild a trained network from a run's Lightning checkpoint and the config that made it.

A checkpoint holds `Classifier` weights (`net.<layer>` keys); the network's class and sizes
come from the run's saved config, `<run>/checkpoints/x.ckpt` -> `<run>/.hydra/config.yaml`
(its paths resolve against this checkout), or, for a checkpoint copied out of its run, from
the config stored inside it (`mnist_lab_config`, written by `Classifier.on_save_checkpoint`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from mnist_lab.errors import UserError

# Where Classifier.on_save_checkpoint stores the resolved model and data config.
CONFIG_KEY = "mnist_lab_config"


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or not a mnist_lab Classifier checkpoint."""


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's best checkpoint (its last one when there is no best).

    Args:
        path: a `.ckpt` file or a run directory holding `checkpoints/`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        best = sorted((path / "checkpoints").glob("best-*.ckpt"))
        last = path / "checkpoints" / "last.ckpt"
        if best or last.is_file():
            return best[-1] if best else last
        raise CheckpointError(
            f"ckpt_path={path} is a directory without checkpoints/best-*.ckpt or checkpoints/last.ckpt. "
            "Pass a .ckpt file, or a run directory written by `python -m mnist_lab`."
        )
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={path} does not exist. Pass a checkpoint file, e.g. "
            "runs/<date>/<time>/checkpoints/last.ckpt, or the run directory itself."
        )
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load a Lightning checkpoint on the CPU, turning every way it can fail into a CheckpointError.

    weights_only=True: mnist_lab checkpoints hold only tensors, numbers, strings and dicts, and
    a checkpoint that needs arbitrary unpickling (code execution) is refused, not trusted.

    Args:
        path: the checkpoint file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"The checkpoint {path} is empty (0 bytes): the save was interrupted. Use another one.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path} stores Python objects other than tensors and plain values, which torch.load with "
                "weights_only=True refuses to unpickle (that could run arbitrary code). mnist_lab checkpoints "
                "never do; this file comes from other code. Pass a checkpoint written by `python -m mnist_lab`."
            ) from e
        raise _not_a_checkpoint(path, size, e) from e
    except (KeyError, EOFError) as e:  # what the unpickler raises on bytes that are no pickle at all
        raise _not_a_checkpoint(path, size, e) from e
    except Exception as e:  # RuntimeError (zip reader), OSError, ...: a damaged PyTorch file
        raise CheckpointError(
            f"{path} ({size} bytes) cannot be read as a PyTorch checkpoint: {str(e).splitlines()[0]}. "
            "The file is truncated or corrupted (an interrupted copy or save?); copy it again or use "
            "another checkpoint of the run (checkpoints/last.ckpt or best-*.ckpt)."
        ) from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        what = f"a dict with keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is a PyTorch file but not a Lightning checkpoint: it holds {what}, without a "
            "'state_dict'. Pass a .ckpt file written by `python -m mnist_lab`."
        )
    return checkpoint


def _not_a_checkpoint(path: Path, size: int, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} ({size} bytes) is not a PyTorch checkpoint (unpickling failed: {type(e).__name__} {e}). "
        "Pass a .ckpt file written by `python -m mnist_lab` (runs/<date>/<time>/checkpoints/)."
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
            return OmegaConf.create(checkpoint[CONFIG_KEY])
        raise CheckpointError(
            f"{path} does not store its config, and {saved} (where a run keeps it) does not exist. "
            "Keep the checkpoint inside its run directory (<run>/checkpoints/), or copy the run's "
            f".hydra/config.yaml to {saved}."
        )
    try:
        cfg = OmegaConf.load(saved)
        # Only model and data are needed; paths.output_dir points at Hydra's runtime, absent here.
        return OmegaConf.create(
            {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}
        )
    except (OmegaConfBaseException, AttributeError, ValueError) as e:
        raise CheckpointError(
            f"The run config {saved} of {path} has no usable model/data sections ({e}). "
            "Restore the run's original .hydra/config.yaml."
        ) from e


def net_state_dict(checkpoint: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The network's weights of a Classifier checkpoint: its `net.<layer>` entries without the prefix.

    Args:
        checkpoint: a loaded checkpoint (read_checkpoint).
        path: its file, named in errors.
    """
    state = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    if not state:
        keys = list(checkpoint["state_dict"])[:4]
        raise CheckpointError(
            f"{path} is a Lightning checkpoint from another project: its weights are named {keys}..., "
            "while a mnist_lab Classifier stores its network under 'net.<layer>'. Pass a checkpoint "
            "written by `python -m mnist_lab`."
        )
    return state


def load_net(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """Rebuild a run's network with its trained weights, in eval mode on the CPU; return it and its config.

    Args:
        path: a checkpoint file, or a run directory (its best checkpoint is used).
    """
    path = find_checkpoint(path)
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
    expected = net.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"The weights in {path} do not fit the network its config describes ({cfg.model._target_}): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatches (saved vs built) {shapes[:3]}. "
            "The checkpoint and the config come from different runs; keep the checkpoint in its own run directory."
        )
    net.load_state_dict(state)
    return net.eval(), cfg
