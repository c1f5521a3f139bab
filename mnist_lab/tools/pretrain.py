"""`mnist-lab pretrain [--models cnn lenet5 mlp]`: regenerate the bundled MNIST-pretrained weights and their cards.

Each model of conf/model is trained at its default settings with experiment=pretrain_mnist
(a training run of its own under runs/pretrain/, which exports its best weights into its run
directory), those weights copied to pretrained/mnist_<model>.pt, and the card
pretrained/mnist_<model>.card.json written beside them:
the model config, the command, the commit, the MNIST validation and test accuracy (the test
accuracy measured by inference on the saved file, as tests/test_pretrained.py checks it),
the date, the machine and the sha256.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from mnist_lab import ROOT_DIR
from mnist_lab.data.idx import IDXSource
from mnist_lab.data.pixels import MNIST_MEAN, MNIST_STD
from mnist_lab.files import atomic_file, write_json
from mnist_lab.inference.predictor import probabilities
from mnist_lab.pretrained import MODELS, PRETRAINED_DIR, weights_path
from mnist_lab.weights import EXPORTED, card_path, read_state_dict, sha256


def pretrain(model: str, stamp: str) -> dict:
    """Train `model` on MNIST, copy the weights its run exported to pretrained/, write and return their card."""
    run_dir = ROOT_DIR / "runs" / "pretrain" / stamp / model
    # Paths relative to the repository: the card holds no machine's path.
    command = [
        "mnist-lab",
        "experiment=pretrain_mnist",
        f"model={model}",
        f"hydra.run.dir={run_dir.relative_to(ROOT_DIR)}",
    ]
    subprocess.run([sys.executable, "-m", "mnist_lab", *command[1:]], check=True, cwd=ROOT_DIR)
    with atomic_file(weights_path(model), "wb") as f:
        f.write((run_dir / EXPORTED).read_bytes())
    return write_card(model, run_dir, " ".join(command))


def mnist_test_accuracy(net: Any, batch_size: int = 1000) -> float:
    """Accuracy of `net` (eval mode, CPU) on the repository's 10,000 MNIST test images, inference only."""
    splits = IDXSource(str(ROOT_DIR / "data" / "mnist")).load()
    probs = probabilities(net.eval(), splits.test_x, MNIST_MEAN, MNIST_STD, batch_size)
    return float((probs.argmax(1) == splits.test_y).float().mean())


def write_card(model: str, run_dir: Path, command: str) -> dict:
    """The card of pretrained/mnist_<model>.pt, copied from the training run in `run_dir`."""
    from hydra.utils import instantiate

    weights = weights_path(model)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = cast(DictConfig, OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    resolved = {k: OmegaConf.to_container(saved[k], resolve=True) for k in ("model", "data")}
    model_cfg = resolved["model"]
    # The data config, for evaluating the weights on what they were trained on; the repository's
    # own path becomes the root resolver again, so the card holds no machine's path.
    data_cfg = json.loads(json.dumps(resolved["data"]).replace(str(ROOT_DIR), "${mnist_lab_root:}"))
    data_cfg["augment"] = None  # training-time only
    net = instantiate(model_cfg)
    net.load_state_dict(read_state_dict(weights, "weights"))
    environment = json.loads((run_dir / "environment.json").read_text())
    card = {
        "model": model_cfg,
        "data": data_cfg,
        "command": command,
        "regenerate": "mnist-lab pretrain",
        "commit": environment.get("git_commit"),
        "dirty": environment.get("git_dirty"),
        "val_acc": metrics["val/acc_best"],
        "test_acc": mnist_test_accuracy(net),
        "test_acc_lightning": metrics.get("test/acc"),
        "epochs": metrics["epochs"],
        "train_seconds": metrics["train_seconds"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": {k: environment.get(k) for k in ("cpu", "cpu_cores", "torch_cpu_capability", "torch")},
        "size_bytes": weights.stat().st_size,
        "sha256": sha256(weights),
    }
    write_json(card_path(weights), card)
    print(f"{weights.relative_to(ROOT_DIR)}: MNIST val {card['val_acc']:.2%}, test {card['test_acc']:.2%}")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-lab pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    PRETRAINED_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    for model in args.models:
        pretrain(model, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
