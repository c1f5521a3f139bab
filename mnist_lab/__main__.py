"""`python -m mnist_lab [overrides]`: compose the config, print it, train(cfg)."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from mnist_lab import CONF_DIR
from mnist_lab.errors import UserError


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from mnist_lab.train import train  # after Hydra parsed the command line: --help stays fast
    from mnist_lab.utils import print_config_tree

    print_config_tree(cfg)
    try:
        metrics = train(cfg)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"\nError: {e}", file=sys.stderr)
        sys.exit(1)
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()
