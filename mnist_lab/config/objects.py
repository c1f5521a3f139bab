"""Build the cheap parts of a run (network, fine-tune strategy, optimizer) and check that they fit, before any data is read.

The network and the strategy built here are the run's own: train() takes them from `Built`
instead of building them again. So every RNG is seeded with `seed` first, as the run would
be: the network's initial weights are a function of the seed alone.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist_lab.checkpoints import resume_mismatch
from mnist_lab.errors import UserError
from mnist_lab.pretrained import BUNDLED, bundled_for, no_bundled_reason


class Problem(typing.NamedTuple):
    path: str
    value: Any
    reason: str  # what is wrong and what is allowed


class Built(typing.NamedTuple):
    net: nn.Module | None
    finetune: Any  # a bound mnist_lab.finetune.FineTune, or None when the config has none
    problems: list[Problem]


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, re-raising a UserError from the constructor unwrapped.

    Hydra wraps every constructor error in an InstantiationException; a ConfigError inside
    already is the one-paragraph report and should reach the user as it is.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def build_and_check(cfg: DictConfig) -> Built:
    """Seed every RNG; build the network and the bound fine-tune strategy; list every problem of how they fit."""
    pl.seed_everything(cfg.seed, workers=True)
    try:
        net = build(cfg.model)
    except Exception as e:
        return Built(None, None, [Problem("model", cfg.model.get("_target_"), f"cannot be built: {_cause(e)}")])
    problems: list[Problem] = []
    try:
        build(cfg.optimizer)(net.parameters())
    except Exception as e:
        problems.append(
            Problem("optimizer", OmegaConf.to_container(cfg.optimizer), f"is rejected by the optimizer: {_cause(e)}")
        )
    strategy = None
    if isinstance(cfg.get("finetune"), DictConfig) and "_target_" in cfg.finetune:
        try:
            strategy = build(cfg.finetune)
            if hasattr(strategy, "bind"):
                strategy.bind(net)  # its group names against the model's group_names
            if getattr(strategy, "checkpoint", None) == BUNDLED:  # the bundled weights of this model
                found = bundled_for(cfg.model)
                if found is None:
                    problems.append(Problem("finetune.checkpoint", BUNDLED, no_bundled_reason(cfg.model)))
                else:
                    strategy.checkpoint = str(found[0])
        except Exception as e:
            problems.append(Problem("finetune", cfg.finetune._target_, f"does not fit the model: {_cause(e)}"))
    ckpt = cfg.get("ckpt_path")
    if isinstance(ckpt, str) and Path(ckpt).is_file():
        reason = resume_mismatch(ckpt, net)
        if reason:
            problems.append(Problem("ckpt_path", ckpt, reason))
    return Built(net, strategy, problems)


def _cause(e: BaseException) -> str:
    if isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
