"""Small helpers of the training recipe: config printing, atomic files, run records."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

import mnist_lab


def print_config_tree(cfg: DictConfig, resolve: bool = True) -> None:
    """Print the composed config as a rich tree, one branch per top-level group."""
    tree = rich.tree.Tree("config", style="bold")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold cyan")
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, DictConfig) else repr(value)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml"))
    rich.print(tree)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path` in one rename.

    A kill at any moment leaves either the old content or the new, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically (see atomic_file)."""
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists become strings (TensorBoard's HParams takes scalars)."""
    out: dict[str, Any] = {}
    items = cfg.items() if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True).items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = "null" if value is None else value
        else:
            out[name] = str(value)
    return out


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def environment_record() -> dict[str, Any]:
    """What a run needs to be reproduced: package, git commit, library versions."""
    import pytorch_lightning
    import torch
    import torchvision

    record = {
        "mnist_lab": mnist_lab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        # The other libraries whose behaviour a run depends on (config composition, metrics, RNG).
        **{name: _version(name) for name in ("hydra-core", "omegaconf", "torchmetrics", "numpy")},
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        git = ["git", "-C", str(mnist_lab.ROOT_DIR)]
        record["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        record["git_dirty"] = bool(
            subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=5).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        record["git_commit"] = None
    return record
