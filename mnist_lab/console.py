"""What a run shows on the terminal."""

from __future__ import annotations

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf


def print_config_tree(cfg: DictConfig, resolve: bool = True) -> None:
    """Print the composed config as a rich tree, one branch per top-level group."""
    tree = rich.tree.Tree("config", style="bold")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold cyan")
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, DictConfig) else repr(value)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml"))
    rich.print(tree)
