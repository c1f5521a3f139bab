"""Every YAML of every config group composes and instantiates; bad choices fail clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from mnist_lab import CONF_DIR, ROOT_DIR
from tests.conftest import compose_config

GROUPS = ["model", "optimizer", "scheduler", "data", "finetune", "trainer", "logger", "callbacks"]
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (ROOT_DIR / "experiments").glob("*.yaml"))


def test_every_group_has_choices():
    assert {g for g, _ in CHOICES} == set(GROUPS)
    assert (CONF_DIR / "experiment").resolve() == (ROOT_DIR / "experiments").resolve()


def instantiate_run_objects(cfg, tmp_path):
    """Instantiate every part of a composed config the way train() does."""
    net = instantiate(cfg.model)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, cfg.data.num_classes)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    scheduler = instantiate(cfg.scheduler.scheduler)
    if scheduler is not None:
        kwargs = {"total_steps": 10} if "total_steps" in str(scheduler) or "OneCycle" in str(scheduler) else {}
        scheduler(optimizer, **kwargs)
    data = instantiate(cfg.data)
    assert data.batch_size >= 1
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, accelerator="cpu")
    assert trainer.max_epochs >= 1


@pytest.mark.parametrize("group,choice", CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_group_choice_instantiates(group, choice, tmp_path):
    cfg = compose_config([f"{group}={choice}"] if group != "trainer" or choice != "gpu" else [], tmp_path)
    if group == "trainer" and choice == "gpu":  # composes everywhere; instantiates only on a GPU
        cfg = compose_config(["trainer=gpu"], tmp_path)
        assert cfg.trainer.accelerator == "gpu"
        return
    instantiate_run_objects(cfg, tmp_path)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tmp_path):
    cfg = compose_config([f"experiment={name}"], tmp_path)
    if cfg.trainer.accelerator == "gpu":
        pytest.skip("GPU-only experiment: composes, instantiated on GPU machines")
    instantiate_run_objects(cfg, tmp_path)


def test_augment_choice_instantiates(tmp_path):
    cfg = compose_config(["data/augment=affine"], tmp_path)
    data = instantiate(cfg.data)
    assert data.augment is not None and data.augment.degrees == 10.0


def test_unknown_choice_lists_the_options(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mnist_lab", "model=nope", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "model/nope" in message
    for option in ("cnn", "lenet5", "mlp"):
        assert option in message
    assert not (tmp_path / "run" / "metrics.json").exists()
