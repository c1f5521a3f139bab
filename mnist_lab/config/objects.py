"""Build the run's objects from a config (network, fine-tune strategy) and check that they fit, before any data is read.

`build_run` is what train() calls, after seeding, for the run's own network and strategy;
`check_objects` builds the same objects and an optimizer to find every problem of how they
fit, and leaves the global RNG state as it found it: the run's initial weights stay a
function of the seed alone.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist_lab.errors import ConfigError, UserError
from mnist_lab.pretrained import BUNDLED, bundled_for, no_bundled_reason
from mnist_lab.rng import rng_kept
from mnist_lab.weights import find_weights, resume_mismatch


class Problem(typing.NamedTuple):
    path: str
    value: Any
    reason: str  # what is wrong and what is allowed


class Built(typing.NamedTuple):
    net: nn.Module
    finetune: Any  # a bound mnist_lab.finetune.FineTune, or None when the config has none


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


def build_run(cfg: DictConfig) -> Built:
    """The network, and the fine-tune strategy bound to it with its starting weights resolved to a file."""
    net = build(cfg.model)
    strategy = _strategy(cfg)
    if strategy is not None:
        strategy.bind(net)
        strategy.checkpoint = starting_weights(strategy.checkpoint, cfg.model)
    return Built(net, strategy)


def starting_weights(checkpoint: str | None, model_cfg: DictConfig) -> str | None:
    """The file finetune.checkpoint names: `bundled` -> the bundled weights of the model, a run directory -> its weights.

    Raises a UserError whose message is the reason, to follow `finetune.checkpoint=<value>`.
    """
    if not checkpoint:
        return None
    if checkpoint == BUNDLED:
        found = bundled_for(model_cfg)
        if found is None:
            raise ConfigError(no_bundled_reason(model_cfg))
        return str(found[0])
    path = Path(checkpoint).expanduser()
    return str(find_weights(path)) if path.is_dir() else checkpoint


def check_objects(cfg: DictConfig) -> list[Problem]:
    """Every problem of how the network, the optimizer, the fine-tune strategy and ckpt_path fit each other."""
    with rng_kept():  # building draws initial weights: the run draws its own after seeding
        try:
            net = build(cfg.model)
        except Exception as e:
            return [Problem("model", cfg.model.get("_target_"), f"cannot be built: {_cause(e)}")]
        problems: list[Problem] = []
        try:
            build(cfg.optimizer)(net.parameters())
        except Exception as e:
            problems.append(
                Problem(
                    "optimizer", OmegaConf.to_container(cfg.optimizer), f"is rejected by the optimizer: {_cause(e)}"
                )
            )
        try:
            strategy = _strategy(cfg)
            if strategy is not None:
                strategy.bind(net)  # its group names against the model's group_names
        except Exception as e:
            problems.append(Problem("finetune", cfg.finetune._target_, f"does not fit the model: {_cause(e)}"))
        else:
            checkpoint = getattr(strategy, "checkpoint", None)
            try:
                starting_weights(checkpoint, cfg.model)
            except UserError as e:
                named = f"finetune.checkpoint={Path(str(checkpoint)).expanduser()} "  # Problem names key and value
                problems.append(Problem("finetune.checkpoint", checkpoint, str(e).removeprefix(named)))
    ckpt = cfg.get("ckpt_path")
    if isinstance(ckpt, str) and Path(ckpt).is_file():
        mismatch = resume_mismatch(ckpt, net)
        if mismatch:
            problems.append(Problem("ckpt_path", ckpt, mismatch))
    return problems


def _strategy(cfg: DictConfig) -> Any:
    """The configured fine-tune strategy (unbound), or None."""
    if isinstance(cfg.get("finetune"), DictConfig) and "_target_" in cfg.finetune:
        return build(cfg.finetune)
    return None


def _cause(e: BaseException) -> str:
    if isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
