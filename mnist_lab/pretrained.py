"""MNIST-pretrained weights that ship with the repository, one per model of conf/model at its defaults.

`pretrained/mnist_<model>.pt` is a plain state_dict; `pretrained/mnist_<model>.card.json` beside it
is its card: the model config it fits, the command and commit that produced it, its MNIST
validation and test accuracy, the date, the machine and the file's sha256. `mnist-lab
pretrain` regenerates them all (mnist_lab/tools/pretrain.py). A fine-tune strategy with
`finetune.checkpoint: bundled` starts from the card whose model config equals the run's
(the number of classes aside: a head of another size is re-initialised), each side with the
model's own defaults filled in, so a card written before a model gained an option still fits
a config that leaves the option at its default.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from mnist_lab import ROOT_DIR
from mnist_lab.weights import card_path, read_card

PRETRAINED_DIR = ROOT_DIR / "pretrained"
BUNDLED = "bundled"  # the value of finetune.checkpoint that asks for the bundled weights
MODELS = ("cnn", "lenet5", "mlp")  # conf/model choices that have bundled weights


def weights_path(model: str) -> Path:
    return PRETRAINED_DIR / f"mnist_{model}.pt"


def _defaults(target: Any) -> dict[str, Any]:
    """The keyword defaults of a model's `_target_`; none for one that does not import (validate names it)."""
    if not isinstance(target, str):
        return {}
    try:
        params = inspect.signature(get_object(target)).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _comparable(model: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**_defaults(model.get("_target_")), **model}.items() if k != "num_classes"}


def bundled_for(model_cfg: DictConfig) -> tuple[Path, dict[str, Any]] | None:
    """The bundled weights whose card's model config equals `model_cfg` (but for num_classes), and the card."""
    wanted = _comparable(OmegaConf.to_container(model_cfg, resolve=True))  # type: ignore[arg-type]
    for model in MODELS:
        weights = weights_path(model)
        card = read_card(weights) if card_path(weights).is_file() else None
        if card is not None and _comparable(card["model"]) == wanted:
            return weights, card
    return None


def no_bundled_reason(model_cfg: DictConfig) -> str:
    """Why `bundled` does not apply to `model_cfg`, and how to produce and pass weights for it."""
    wanted = _comparable(OmegaConf.to_container(model_cfg, resolve=True))  # type: ignore[arg-type]
    settings = ", ".join(f"{k}={v}" for k, v in wanted.items() if k != "_target_")
    have = ", ".join(m for m in MODELS if card_path(weights_path(m)).is_file()) or "none"
    return (
        f"asks for the bundled MNIST weights, but none fit this model configuration ({wanted.get('_target_')} with "
        f"{settings}): pretrained/ holds weights for the models of conf/model at their default settings only "
        f"({have}). Produce weights for this configuration with `mnist-lab experiment=pretrain_mnist "
        "model=<choice> <the same model.* overrides>` (it exports them into its own run directory, as "
        "<run>/pretrained/weights.pt) and pass finetune.checkpoint=<that run directory>, or use "
        "finetune=none to train from the initial weights"
    )


def describe_start(weights: str | Path, data_cfg: DictConfig) -> str:
    """One log line on the weights a fine-tuning run on `data_cfg` starts from, with their card's accuracy."""
    path = Path(weights)
    if not card_path(path).is_file():
        return f"Fine-tune: starting from the weights in {path}"
    card = read_card(path)
    if "test_acc" in card:  # the bundled weights' cards measure it (mnist-lab pretrain)
        shown = path.relative_to(ROOT_DIR) if path.is_relative_to(ROOT_DIR) else path
        line = f"Fine-tune: starting from the bundled weights {shown} (MNIST test accuracy {card['test_acc']:.2%}"
    else:
        val = "unknown" if card.get("val_acc") is None else f"{card['val_acc']:.2%}"
        line = f"Fine-tune: starting from the weights in {path} (val/acc {val} in the run that exported them"
    line += f", card {card_path(path).name})"
    if card.get("data") and is_mnist(OmegaConf.create(card["data"])) and is_mnist(data_cfg):
        line += "; the target is MNIST itself, the data these weights were pretrained on"
    return line


def is_mnist(data_cfg: DictConfig) -> bool:
    """Whether a data config reads the repository's MNIST, the data the bundled weights were trained on."""
    source = data_cfg.get("source")
    if source is None or source.get("_target_") != "mnist_lab.data.IDXSource":
        return False
    return Path(str(source.root)).resolve() == (ROOT_DIR / "data" / "mnist").resolve()
