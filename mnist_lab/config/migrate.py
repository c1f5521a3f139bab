"""Saved configs written by earlier versions: their `_target_`s renamed to today's import paths.

Run directories and checkpoints keep the config they were trained with; a class that moved
since is found through RENAMED, so an old run still evaluates, predicts and resumes.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, open_dict

# old import path -> new import path
RENAMED = {
    "mnist_lab.sources.UCIDigitsSource": "mnist_lab.data.UCIDigitsSource",
    "mnist_lab.sources.TorchvisionSource": "mnist_lab.data.TorchvisionSource",
    "mnist_lab.finetune.ExportWeights": "mnist_lab.callbacks.ExportWeights",
}


def migrate(cfg: DictConfig) -> DictConfig:
    """Rename every moved `_target_` in `cfg` in place; return it."""
    for node in _nodes(cfg):
        target = node._get_node("_target_") if "_target_" in node else None
        if target is not None and not target._is_interpolation() and node._target_ in RENAMED:
            with open_dict(node):
                node._target_ = RENAMED[node._target_]
    return cfg


def _nodes(node):
    if isinstance(node, DictConfig):
        yield node
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _nodes(child)
    elif isinstance(node, ListConfig):
        for child in node._iter_ex(resolve=False) if hasattr(node, "_iter_ex") else node:
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _nodes(child)
