"""Saved configs written by earlier versions: their `_target_`s renamed to today's import paths.

Run directories and checkpoints keep the config they were trained with; a class that moved
since is found through RENAMED, so an old run still evaluates, predicts and resumes.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# old import path -> new import path
RENAMED = {
    "mnist_lab.sources.UCIDigitsSource": "mnist_lab.data.UCIDigitsSource",
    "mnist_lab.sources.TorchvisionSource": "mnist_lab.data.TorchvisionSource",
    "mnist_lab.finetune.ExportWeights": "mnist_lab.callbacks.ExportWeights",
}


def migrate(cfg: DictConfig) -> DictConfig:
    """Rename every moved `_target_` in `cfg` in place (interpolations left alone); return it."""
    for path in _moved_targets(OmegaConf.to_container(cfg, resolve=False)):
        OmegaConf.update(cfg, path, RENAMED[OmegaConf.select(cfg, path)], force_add=True)
    return cfg


def _moved_targets(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the `_target_` keys below `node` (plain containers) that name a moved class."""
    if isinstance(node, dict):
        found = [f"{prefix}_target_"] if node.get("_target_") in RENAMED else []
        return found + [p for k, v in node.items() for p in _moved_targets(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _moved_targets(v, f"{prefix}[{i}].".replace(".[", "["))]
    return []
