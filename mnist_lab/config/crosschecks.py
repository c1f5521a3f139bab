"""Values that are each in range but do not fit together, the dataset or this machine.

A 5-output head for 10 classes, a batch larger than the training split, a GPU on a machine
without one: each fails here as a Problem of the key to change, before any data is read,
instead of in the first training step or inside Lightning's accelerator setup.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from mnist_lab.config.objects import Problem, build
from mnist_lab.config.rules import is_int


def check_across(cfg: DictConfig) -> list[Problem]:
    """Every problem of how the config's values fit each other, the dataset's size and this machine."""
    return [
        *_num_classes(cfg),
        *_norm_after_pool(cfg.get("model")),
        *_batch_size(cfg.get("data")),
        *_devices(cfg.get("trainer")),
        *_unlabelled(cfg),
    ]


def _semi_supervised(finetune: Any) -> bool:
    """Whether the finetune config is a semi-supervised strategy (mnist_lab/semisupervised.py)."""
    from mnist_lab.semisupervised import FixMatch

    target = finetune.get("_target_") if isinstance(finetune, DictConfig) else None
    try:
        found = get_object(target) if isinstance(target, str) else None
    except Exception:  # a stale _target_ is reported by the key check
        return False
    return isinstance(found, type) and issubclass(found, FixMatch)


def _unlabelled(cfg: DictConfig) -> list[Problem]:
    """No labels without a semi-supervised strategy; a semi-supervised one under DDP.

    A semi-supervised strategy with every label kept (labels_per_class null, the default) is
    reported when the data is read (DigitsDataModule.use_unlabelled): each conf/finetune file
    stays a valid choice on its own.
    """
    labels = OmegaConf.select(cfg, "data.labels_per_class")
    semi = _semi_supervised(cfg.get("finetune"))
    if labels == 0 and not semi:
        return [
            Problem(
                "data.labels_per_class",
                0,
                (
                    "leaves no labelled image, and the finetune strategy trains on labels only: allowed is an integer "
                    ">= 1, or keep 0 with a semi-supervised strategy that learns from unlabelled images "
                    "(finetune=fixmatch)"
                ),
            )
        ]
    devices = OmegaConf.select(cfg, "trainer.devices")
    ddp = "ddp" in str(OmegaConf.select(cfg, "trainer.strategy") or "").lower()
    if semi and (ddp or (_needed(devices) or 1) > 1):
        return [
            Problem(
                "trainer.devices",
                devices,
                (
                    "asks for several processes (DDP), but the semi-supervised "
                    "strategies run in one: their unlabelled stream is not sharded across ranks. Allowed is one "
                    "device: trainer=cpu (or trainer.devices=1) with a single-process strategy"
                ),
            )
        ]
    return []


def _num_classes(cfg: DictConfig) -> list[Problem]:
    ours, classes = OmegaConf.select(cfg, "model.num_classes"), OmegaConf.select(cfg, "data.num_classes")
    if not (is_int(ours) and is_int(classes)) or ours == classes:
        return []
    return [
        Problem(
            "model.num_classes",
            ours,
            (
                f"does not match data.num_classes={classes}: the network needs one output per class of the data, "
                f"so allowed is {classes}, which conf/model/*.yaml give by default with `num_classes: ${{data.num_classes}}`"
            ),
        )
    ]


def _norm_after_pool(model: Any) -> list[Problem]:
    """A batch-norm placement asked for in a network without batch norm: it would change nothing, silently."""
    if not isinstance(model, DictConfig) or model.get("norm_after_pool") is not True or model.get("batch_norm"):
        return []
    return [
        Problem(
            "model.norm_after_pool",
            True,
            (
                f"places batch norm after the pool, but model.batch_norm={model.get('batch_norm')}, so there is no "
                "batch norm to place: set model.batch_norm=true as well, or leave norm_after_pool false"
            ),
        )
    ]


def _batch_size(data: Any) -> list[Problem]:
    """A training batch larger than the training split (evaluation batches are capped at their split)."""
    if not isinstance(data, DictConfig):
        return []
    batch = data.get("batch_size")
    bounds = []  # (most training images, why): each step of DigitsDataModule.setup can only shrink the split
    count, val = _train_count(data.get("source")), data.get("val_size")
    if count is not None and is_int(val):
        bounds.append((count - val, f"the source's {count} training images minus data.val_size={val}"))
    if is_int(data.get("labels_per_class")) and is_int(data.get("num_classes")):
        bounds.append(
            (
                data.labels_per_class * data.num_classes,
                f"data.labels_per_class={data.labels_per_class} x data.num_classes={data.num_classes}",
            )
        )
    if is_int(data.get("train_size")):
        bounds.append((data.train_size, "data.train_size"))
    bounds = [b for b in bounds if b[0] >= 1]  # an empty split is DigitsDataModule.setup's to report
    if not (is_int(batch) and bounds):
        return []
    most, why = min(bounds)
    if batch <= most:
        return []
    return [
        Problem(
            "data.batch_size",
            batch,
            (
                f"is larger than the training split, which holds at most {most} images ({why}): allowed is an integer "
                f"from 1 to {most} (only data.eval_batch_size may exceed its split)"
            ),
        )
    ]


def _train_count(source: Any) -> int | None:
    """The source's training images when it can count them without loading (`train_count()`), else None."""
    if not (isinstance(source, DictConfig) and "_target_" in source):
        return None
    try:
        count = getattr(build(source), "train_count", None)
        return count() if callable(count) else None
    except Exception:  # a source that cannot be built fails again, with its own message, when the data is read
        return None


def _devices(trainer: Any) -> list[Problem]:
    """An accelerator or a device count that this machine lacks (`auto` fits every machine)."""
    if not isinstance(trainer, DictConfig) or not isinstance(trainer.get("accelerator"), str):
        return []
    accelerator, devices = trainer.accelerator, trainer.get("devices", "auto")
    devices = OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
    cores, mps = os.cpu_count() or 1, int(torch.backends.mps.is_available())
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    has = {"cpu": cores, "cuda": cuda, "gpu": cuda or mps, "mps": mps}  # Lightning's "gpu" is CUDA, else MPS
    if accelerator not in has:  # auto, or an accelerator (tpu, hpu) that Lightning checks itself
        return []
    gpus = f"{cuda} CUDA GPU{'s' * (cuda > 1)}" if cuda else "no CUDA GPU"
    machine = f"this machine has {gpus}{', Apple MPS' * mps} and {cores} CPU cores"
    if not has[accelerator]:
        return [
            Problem(
                "trainer.accelerator",
                accelerator,
                (
                    f"asks for a device that this machine lacks: {machine}. Allowed here is cpu, or auto (a GPU where "
                    "there is one, else the CPU): use `trainer=cpu` or `trainer.accelerator=cpu`"
                ),
            )
        ]
    needed = _needed(devices)
    if accelerator == "cpu":  # Lightning takes a count of processes > 0 or auto; more than the cores only compete
        fits = devices == "auto" or (needed is not None and not isinstance(devices, list) and needed <= cores)
        allowed = f"an integer from 1 to {cores} (processes, one per core) or auto"
    else:
        fits = needed is None or needed <= has[accelerator]
        allowed = f"an integer from 1 to {has[accelerator]}, -1 (every GPU) or auto"
    if fits:
        return []
    return [
        Problem(
            "trainer.devices",
            devices,
            f"does not fit trainer.accelerator={accelerator} here: {machine}. Allowed is {allowed}",
        )
    ]


def _needed(devices: Any) -> int | None:
    """How many devices Lightning's `devices` needs to exist: n for n or "n", the highest index + 1
    for a list or "0,2"; None for auto, -1 (every device) and anything else."""
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            return None
        devices = [int(p) for p in parts] if "," in devices else int(parts[0])
    if isinstance(devices, list):
        return max(devices) + 1 if devices and all(is_int(d) and d >= 0 for d in devices) else None
    return devices if is_int(devices) and devices > 0 else None
