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

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from mnist_lab import ROOT_DIR

PRETRAINED_DIR = ROOT_DIR / "pretrained"
BUNDLED = "bundled"  # the value of finetune.checkpoint that asks for the bundled weights
MODELS = ("cnn", "lenet5", "mlp")  # conf/model choices that have bundled weights


def weights_path(model: str) -> Path:
    return PRETRAINED_DIR / f"mnist_{model}.pt"


def card_path(weights: Path) -> Path:
    # .card.json: ExportWeights already writes a plain .json (the run it came from) beside weights.
    return weights.with_suffix(".card.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_card(weights: Path) -> dict[str, Any]:
    return json.loads(card_path(weights).read_text())


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
        "model=<choice> <the same model.* overrides>` (it writes checkpoints/pretrained/mnist_cnn.pt; "
        "callbacks.export_weights.path=<file> names another) and pass finetune.checkpoint=<that file>, or use "
        "finetune=none to train from the initial weights"
    )


def bundled_config(weights: Path) -> DictConfig:
    """The `model` and `data` config of bundled weights, from their card (data: what they were trained on)."""
    card = read_card(weights)
    return OmegaConf.create({"model": card["model"], "data": card["data"]})


def describe_start(checkpoint: str) -> str:
    """One log line on the weights a fine-tuning run starts from (with the card's accuracy when it has one)."""
    path = Path(checkpoint)
    if not card_path(path).is_file():
        return f"Fine-tune: starting from the weights in {path}"
    card = read_card(path)
    return (
        f"Fine-tune: starting from the bundled weights {path.relative_to(ROOT_DIR) if path.is_relative_to(ROOT_DIR) else path}"
        f" (MNIST test accuracy {card['test_acc']:.2%}, card {card_path(path).name})"
    )


def is_mnist(data_cfg: DictConfig) -> bool:
    """Whether a data config reads the repository's MNIST, the data the bundled weights were trained on."""
    source = data_cfg.get("source")
    if source is None or source.get("_target_") != "mnist_lab.data.IDXSource":
        return False
    return Path(str(source.root)).resolve() == (ROOT_DIR / "data" / "mnist").resolve()


def mnist_test_accuracy(net: Any, batch_size: int = 1000) -> float:
    """Accuracy of `net` (eval mode, CPU) on the repository's 10,000 MNIST test images, inference only."""
    from mnist_lab.data.idx import IDXSource
    from mnist_lab.data.pixels import MNIST_MEAN, MNIST_STD
    from mnist_lab.inference.predictor import probabilities

    splits = IDXSource(str(ROOT_DIR / "data" / "mnist")).load()
    probs = probabilities(net.eval(), splits.test_x, MNIST_MEAN, MNIST_STD, batch_size)
    return float((probs.argmax(1) == splits.test_y).float().mean())
