"""A run's records beside its metrics: the environment it ran in, and TensorBoard's HParams tab."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

import mnist_lab

# The final metrics a run reports; the HParams tab shows these beside the flattened config.
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc_best", "train_seconds")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists become strings (TensorBoard's HParams takes scalars)."""
    out: dict[str, Any] = {}
    items = (cfg if isinstance(cfg, dict) else cast(dict, OmegaConf.to_container(cfg, resolve=True))).items()
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


def machine_record() -> dict[str, Any]:
    """The machine a figure came from: CPU model and cores, the ISA torch uses, native bf16, the GPU."""
    import os

    import torch

    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the model from platform, flags unknown
        pass
    return {
        "cpu": model,
        "cpu_cores": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Native bf16 arithmetic: AVX512-BF16 or AMX (otherwise bf16 is emulated, usually slower).
        "native_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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
        **machine_record(),
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


def log_hparams(logger: Any, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Fill TensorBoard's HParams tab of a TensorBoardLogger: the flattened config against the run's final metrics.

    Lightning's own log_hyperparams would log the metrics again as scalars at step 0; the
    scalars test/acc etc. already exist, so only the summary that links them is written.
    """
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith(("paths/", "hydra/"))}
    # val/acc_best and test/* are scalars already (logged by the loops); train time is not,
    # so it is logged here under a tag of its own and the HParams tab links that tag.
    tags = {k: "time/train_seconds" if k == "train_seconds" else k for k in HPARAM_METRICS}
    final = {tags[k]: float(metrics[k]) for k in HPARAM_METRICS if metrics.get(k) is not None}
    writer = logger.experiment  # a SummaryWriter; add_scalar opens its event file (writer.file_writer)
    writer.add_scalar(tags["train_seconds"], metrics["train_seconds"], metrics["global_steps"])
    for summary in hparams(params, final):
        writer.file_writer.add_summary(summary)
    writer.flush()
