"""Shared fixtures: composing the real config with test overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mnist_lab import CONF_DIR, ROOT_DIR

MNIST_DIR = ROOT_DIR / "data" / "mnist"

# A run small enough for seconds on 2 CPU cores: 1,024 training images (16 batches of 64),
# 500 validation images, 2 test batches of 500, one epoch, loss logged every 4 steps.
TINY = [
    "data.train_size=1024",
    "data.val_size=500",
    "data.eval_batch_size=500",
    "trainer.max_epochs=1",
    "optimizer.lr=0.05",  # 16 steps at the article's 0.001 barely leave chance level
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=4",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
]


def compose_config(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
    """The config `python -m mnist_lab` would build, with output_dir pointed at a test folder."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else ["paths.output_dir=/nonexistent"]
        return compose("config", overrides=[*overrides, *extra])


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_config([*TINY, *overrides], output_dir=tmp_path / "run")

    return make
