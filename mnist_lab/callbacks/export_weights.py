"""Exporting a run's best network as a weights file with its card (mnist_lab/weights.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl

from mnist_lab.errors import ConfigError
from mnist_lab.files import write_json
from mnist_lab.weights import card_path, read_state_dict, save_atomic

log = logging.getLogger(__name__)


class ExportWeights(pl.Callback):
    """At the end of fit, save the best checkpoint's network as a plain state_dict, with its card beside it.

    The card holds the run's `model` and `data` config (what rebuilds the network: the file
    alone is then a model for evaluate, predict and fine-tuning), the checkpoint it came from
    and its val/acc. Refuses (before training) to replace an existing file unless
    `overwrite`, so a run never silently replaces weights that fine-tuning runs were made from.

    Args:
        path: where the state_dict goes.
        overwrite: replace an existing file.
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        self.path, self.overwrite = Path(path), overwrite

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.path.exists() and not self.overwrite and trainer.ckpt_path is None:
            raise ConfigError(
                f"{self.path} already exists (see {card_path(self.path)} for the run it came from): "
                "refusing to replace it. Move it away, or pass callbacks.export_weights.overwrite=true, or "
                "callbacks.export_weights.path=<another file>."
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        state = read_state_dict(best) if best else {k: v.cpu() for k, v in pl_module.net.state_dict().items()}
        save_atomic(state, self.path)
        score = None if ckpt is None or ckpt.best_model_score is None else float(ckpt.best_model_score)
        config = pl_module.config or {}  # Classifier's resolved model and data config
        card = {
            "model": config.get("model"),
            "data": config.get("data"),
            "checkpoint": best,
            "val_acc": None if score is None or math.isnan(score) else score,
        }
        write_json(card_path(self.path), card)
        log.info("Exported the network weights of %s to %s", best or "the last epoch", self.path)
