"""Weight files: what they hold, the one way they are read, fitting them to a network, writing them atomically.

Two kinds of file carry weights:

- A *training checkpoint* (`<run>/checkpoints/last.ckpt`, `best-*.ckpt`), written by Lightning's
  `trainer.save_checkpoint`. It holds Lightning's own entries (`state_dict` with the network
  under `net.<layer>`, `optimizer_states`, `lr_schedulers`, `loops`, `epoch`, `global_step`)
  and, under `callbacks` and at the top level, what mnist_lab's objects add for an exact resume:

  | entry                              | written by                          | what                                    |
  |------------------------------------|-------------------------------------|-----------------------------------------|
  | `mnist_lab_config` (CONFIG_KEY)    | Classifier.on_save_checkpoint       | resolved `model` and `data` config      |
  | `train_loss_window`                | Classifier.on_save_checkpoint       | the unlogged part of the train/loss mean|
  | `finetune`                         | callbacks.FineTuneSchedule          | plateau events and tracker              |
  | `datamodule_hyper_parameters`/...  | DigitsDataModule.state_dict         | the training order's position           |
  | `callbacks[Resumable]`             | callbacks.Resumable                 | global RNG states, train seconds so far |
  | `callbacks[EpochTimer]`            | callbacks.EpochTimer                | per-epoch train and validation seconds  |

  Every entry is tensors, numbers, strings, lists and dicts, so it loads with
  `torch.load(weights_only=True)`: a file that needs arbitrary unpickling is refused.
- A *weights file* (`<name>.pt`): the network's weights alone, a state_dict with keys without
  the `net.` prefix. With a *card* beside it (`<name>.card.json`) it is self-describing: the
  card holds the resolved `model` and `data` config it was trained with, so the file alone
  rebuilds its network. callbacks.ExportWeights writes both (`<run>/pretrained/weights.pt`);
  the bundled `pretrained/mnist_<model>.pt` cards add how they were made (mnist_lab/pretrained.py).

Every file is read by `load_file` here, and only there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_lab.errors import CheckpointError
from mnist_lab.files import atomic_file

log = logging.getLogger(__name__)

LAST = "last.ckpt"  # the resumable state of a run, in <run>/checkpoints/
BEST_GLOB = "best-*.ckpt"  # ModelCheckpoint's best file (conf/callbacks/default.yaml names it)
CONFIG_KEY = "mnist_lab_config"  # the resolved model and data config inside a training checkpoint
NET_PREFIX = "net."  # Classifier keeps the network as `self.net`
EXPORTED = Path("pretrained") / "weights.pt"  # in a run directory (experiments/pretrain_mnist.yaml exports there)


# ----- reading --------------------------------------------------------------------------
def load_file(path: str | Path, key: str) -> Any:
    """torch.load a file on the CPU with weights_only=True; every way it can fail is one CheckpointError.

    Args:
        path: the file.
        key: the config key that named it (ckpt_path, finetune.checkpoint), for the message.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{key}={path} does not exist. Pass a checkpoint file (runs/<date>/<time>/checkpoints/last.ckpt), "
            "a run directory, or a state_dict file."
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{key}={path} is empty (0 bytes): the save was interrupted. Use another checkpoint.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a real pickle, of objects other than tensors
            raise CheckpointError(
                f"{key}={path} cannot be read safely: it stores Python objects other than tensors and plain values, which torch.load with "
                "weights_only=True refuses to unpickle (that could run arbitrary code). mnist_lab checkpoints "
                "never do; this file comes from other code. Pass a checkpoint written by mnist_lab."
            ) from e
        detail = f"it is not a PyTorch checkpoint at all (unpickling failed: {type(e).__name__} {e})"
    except (KeyError, EOFError) as e:  # what the unpickler raises on bytes that are no pickle at all
        detail = f"it is not a PyTorch checkpoint at all (unpickling failed: {type(e).__name__} {e})"
    except Exception as e:  # RuntimeError (zip reader), OSError, ...: a damaged PyTorch file
        detail = f"{str(e).splitlines()[0][:200]}: the file is truncated or corrupted (an interrupted copy or save?)"
    raise CheckpointError(
        f"{key}={path} ({size} bytes) is not a readable checkpoint, it cannot be read as a PyTorch file: {detail}. "
        "Copy it again, or use another checkpoint of the run (checkpoints/last.ckpt or best-*.ckpt)."
    )


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint (a dict with a `state_dict`), or a CheckpointError."""
    checkpoint = load_file(path, key)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        what = (
            f"a dict with keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        )
        raise CheckpointError(
            f"{key}={path} is a PyTorch file but not a Lightning checkpoint: it holds {what}, without a "
            "'state_dict'. Pass a .ckpt file written by `python -m mnist_lab`."
        )
    return checkpoint


def net_state_dict(checkpoint: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The network's weights of a Classifier checkpoint: its `net.<layer>` entries without the prefix."""
    state = {k[len(NET_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not state:
        keys = list(checkpoint["state_dict"])[:4]
        raise CheckpointError(
            f"{path} is a Lightning checkpoint from another project: its weights are named {keys}..., "
            "while a mnist_lab Classifier stores its network under 'net.<layer>'. Pass a checkpoint "
            "written by `python -m mnist_lab`."
        )
    return state


def read_state_dict(path: str | Path, key: str = "finetune.checkpoint") -> dict[str, torch.Tensor]:
    """The network weights in a Lightning checkpoint or a plain state_dict file, keys without `net.`."""
    obj = load_file(path, key)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{key}={path} holds no state_dict (a mapping of parameter names to tensors). Use a "
            ".ckpt written by mnist_lab or a torch.save'd model.state_dict()."
        )
    if any(k.startswith(NET_PREFIX) for k in state):  # a Classifier's checkpoint
        state = {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    return state


def find_checkpoint(path: str | Path, key: str = "ckpt_path") -> Path:
    """A checkpoint file, or a run directory's best checkpoint (its last one when there is no best)."""
    path = Path(path).expanduser()
    if path.is_dir():
        best = sorted((path / "checkpoints").glob(BEST_GLOB))
        last = path / "checkpoints" / LAST
        if best or last.is_file():
            return best[-1] if best else last
        raise CheckpointError(
            f"{key}={path} is a directory without checkpoints/{BEST_GLOB} or checkpoints/{LAST}. "
            "Pass a .ckpt file, or a run directory written by `python -m mnist_lab`."
        )
    if not path.is_file():
        raise CheckpointError(
            f"{key}={path} does not exist. Pass a checkpoint file, e.g. "
            f"runs/<date>/<time>/checkpoints/{LAST}, or the run directory itself."
        )
    return path


def find_weights(path: str | Path, key: str = "finetune.checkpoint") -> Path:
    """The weights to start from: a run directory's exported weights (EXPORTED), else find_checkpoint's."""
    exported = Path(path).expanduser() / EXPORTED
    return exported if exported.is_file() else find_checkpoint(path, key)


# ----- cards ----------------------------------------------------------------------------
def card_path(weights: Path) -> Path:
    # .card.json, not .json: a plain name would read as any JSON file that happens to lie beside it.
    return weights.with_suffix(".card.json")


def read_card(weights: Path) -> dict[str, Any]:
    return json.loads(card_path(weights).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- fitting weights to a network -----------------------------------------------------
def mismatch(net: nn.Module, state: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> list[str]:
    """Every missing, unexpected or misshaped parameter name of `state` against `net`, one line each.

    Args:
        ignore: name prefixes whose shape may differ (a head re-initialised for other classes).
    """
    own = net.state_dict()
    lines = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape and not k.startswith(ignore)
    ]
    lines += [f"{k}: missing from the checkpoint (model {tuple(v.shape)})" for k, v in own.items() if k not in state]
    lines += [f"{k}: in the checkpoint {tuple(v.shape)}, not in the model" for k, v in state.items() if k not in own]
    return lines


def shown(lines: list[str], n: int = 6) -> str:
    """The first `n` lines of a mismatch, joined, and how many more there are."""
    return "; ".join(lines[:n]) + (f"; and {len(lines) - n} more" if len(lines) > n else "")


def load_pretrained(net: nn.Module, path: str | Path) -> list[str]:
    """Load `path` into `net`; a head of another size stays freshly initialised. Returns those keys.

    Raises CheckpointError, before any training, listing every missing, unexpected or
    mismatched parameter with its shapes, when anything but the head does not fit.
    """
    state = read_state_dict(path)
    problems = mismatch(net, state, ignore=("head.",))
    if problems:
        raise CheckpointError(
            f"finetune.checkpoint={path} does not fit {type(net).__name__}: {'; '.join(problems)}. Use the "
            "model config the checkpoint was trained with (model=..., model.batch_norm=..., "
            "model.norm_after_pool=..., widths), or another checkpoint."
        )
    own = net.state_dict()
    head = [k for k in own if k in state and state[k].shape != own[k].shape]
    if head:
        log.warning(
            "Fine-tune: the checkpoint's head has shape %s, the model's %s (another number of classes): "
            "the head is re-initialised, every other layer loaded from %s",
            tuple(state[head[0]].shape),
            tuple(own[head[0]].shape),
            path,
        )
    net.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    return head


def resume_mismatch(path: str | Path, net: nn.Module) -> str | None:
    """Why the checkpoint at `path` cannot resume training of `net` (a sentence), or None when it can."""
    try:
        checkpoint = load_file(path, "ckpt_path")
    except CheckpointError as e:
        return str(e).removeprefix(f"ckpt_path={Path(path).expanduser()} ")  # the caller names key and path
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or "optimizer_states" not in checkpoint
    ):
        return (
            "is not a Lightning training checkpoint (no state_dict / optimizer_states): ckpt_path resumes "
            "training and needs a checkpoint written by a run (checkpoints/last.ckpt); to start from plain "
            "weights use finetune.checkpoint"
        )
    theirs = {k[len(NET_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(NET_PREFIX)}
    problems = mismatch(net, theirs)
    if problems:
        return (
            f"was written by a different network than model={type(net).__name__} configures ({shown(problems, 4)}). "
            "Use the model config the checkpoint was trained with (resume=<run dir> does that), or another checkpoint"
        )
    return None


# ----- writing --------------------------------------------------------------------------
def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save into a temporary file beside `path`, then one rename onto it.

    A kill during the write leaves the old file or the new one, never a truncated file that
    torch.load cannot read.
    """
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)
