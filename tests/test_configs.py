"""Every YAML of every config group composes and instantiates; bad choices fail clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mnist_lab import CONF_DIR, ROOT_DIR
from mnist_lab.config import validate
from tests.conftest import compose_config

GROUPS = ["model", "optimizer", "scheduler", "data", "finetune", "trainer", "logger", "callbacks"]
# conf/data/base.yaml is what every dataset file extends, not a dataset: it leaves `source`
# required (???), so it cannot be instantiated alone. Each dataset that extends it is tested.
BASES = {("data", "base")}
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml")) if (g, p.stem) not in BASES]
EXPERIMENTS = sorted(p.stem for p in (ROOT_DIR / "experiments").glob("*.yaml"))


def test_every_group_has_choices():
    assert {g for g, _ in CHOICES} == set(GROUPS)
    assert (CONF_DIR / "experiment").resolve() == (ROOT_DIR / "experiments").resolve()


def instantiate_run_objects(cfg, tmp_path):
    """Instantiate every part of a composed config the way train() does."""
    validate(cfg, overrides=[], choices={})  # the schema train() checks first accepts every shipped config
    net = instantiate(cfg.model)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, cfg.data.num_classes)
    instantiate(cfg.finetune).bind(net)  # the strategy's layer groups exist in the model
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
    gpu_only = group == "trainer" and choice in ("gpu", "ddp")
    cfg = compose_config([f"{group}={choice}"] if not gpu_only else [], tmp_path)
    if gpu_only:  # composes everywhere; instantiates only on a GPU
        cfg = compose_config([f"trainer={choice}"], tmp_path)
        assert cfg.trainer.accelerator == "gpu"
        if "strategy" in cfg.trainer:
            instantiate(cfg.trainer.strategy)
        return
    instantiate_run_objects(cfg, tmp_path)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tmp_path):
    cfg = compose_config([f"experiment={name}"], tmp_path)
    pretrained = cfg.finetune.get("checkpoint")
    if pretrained and not Path(pretrained).exists():
        # Written by `experiment=pretrain_mnist`, not shipped: check everything else against a
        # stand-in state_dict of the same model.
        stand_in = tmp_path / "pretrained.pt"
        torch.save(instantiate(cfg.model).state_dict(), stand_in)
        cfg = compose_config([f"experiment={name}", f"finetune.checkpoint={stand_in}"], tmp_path)
    if cfg.trainer.accelerator == "gpu":
        pytest.skip("GPU-only experiment: composes, instantiated on GPU machines")
    instantiate_run_objects(cfg, tmp_path)


SEARCHES = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("name", SEARCHES)
def test_hparams_search_composes_and_searches_existing_keys(name, tmp_path):
    """A search preset selects the Optuna sweeper, and every key it searches exists in the config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from hydra_plugins.mnist_lab_optuna.sweeper import distribution

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.mnist_lab_optuna.sweeper.OptunaSweeper"
    assert sweeper.params, "a search preset needs a search space"
    for key, space in sweeper.params.items():
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{key} is not a config key"
        (override,) = OverridesParser.create().parse_overrides([f"{key}={space}"])
        distribution(override)  # choice / interval / range that Optuna can sample
    for part in ("sampler", "pruner"):
        if sweeper[part] is not None:
            instantiate(sweeper[part])
    instantiate_run_objects(compose_config([f"hparams_search={name}"], tmp_path), tmp_path)


AUGMENTS = sorted(p.stem for p in (CONF_DIR / "data" / "augment").glob("*.yaml"))


@pytest.mark.parametrize("name", AUGMENTS)
def test_augment_choice_instantiates(name, tmp_path):
    cfg = compose_config([f"data/augment={name}"], tmp_path)
    data = instantiate(cfg.data)
    assert data.augment is not None and data.augment.degrees == 10.0
    x = torch.rand(4, 1, 28, 28)
    assert data.augment(x).shape == x.shape


@pytest.mark.slow
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
