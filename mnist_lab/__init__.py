"""mnist_lab: config-driven training and fine-tuning of handwritten-digit classifiers."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# The repository root: `conf/`, `data/` and `experiments/` live beside the package.
# `pip install -e .` (the supported install) keeps them reachable from here.
ROOT_DIR = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT_DIR / "conf"

# `${mnist_lab_root:}` in conf/paths/default.yaml: runs and data resolve to the repo,
# whatever directory the command is started from.
if not OmegaConf.has_resolver("mnist_lab_root"):
    OmegaConf.register_new_resolver("mnist_lab_root", lambda: str(ROOT_DIR))
