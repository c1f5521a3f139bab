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


def compose_config(
    overrides: list[str] = (), output_dir: Path | None = None, config_name: str = "config"
) -> DictConfig:
    """The config `python -m mnist_lab` would build, with output_dir pointed at a test folder.

    config_name: another primary config of conf/ (evaluate, predict, export) for its entry point.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else ["paths.output_dir=/nonexistent"]
        return compose(config_name, overrides=[*overrides, *extra])


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_config([*TINY, *overrides], output_dir=tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory of a small trained CNN (12,288 images, 1 epoch: 96.0% test accuracy, ~20 s).

    Shared by the tests of evaluate, predict and export; tested on the full 10k test set so
    that its metrics.json can be compared with `python -m mnist_lab evaluate`.
    """
    from mnist_lab.train import train

    run = tmp_path_factory.mktemp("trained") / "run"
    overrides = [o for o in TINY if not o.startswith(("data.train_size", "trainer.max_epochs", "trainer.limit_test"))]
    extra = ["data.train_size=12288", "data.batch_size=128", "optimizer.lr=0.1", "trainer.max_epochs=1", "logger=none"]
    train(compose_config([*overrides, *extra], run))
    return run


def run_entry_point(entry, argv0: str, *args: str) -> int:
    """Call a command-line entry point in this process (no interpreter start-up) with args as
    its command line; returns the exit status it would have had."""
    import sys

    GlobalHydra.instance().clear()
    old, sys.argv = sys.argv, [argv0, *args]
    try:
        entry()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
