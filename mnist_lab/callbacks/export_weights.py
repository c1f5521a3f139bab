"""Exporting a run's best network as a plain state_dict at a stable path."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from mnist_lab.checkpoints import read_state_dict
from mnist_lab.errors import ConfigError
from mnist_lab.files import write_json

log = logging.getLogger(__name__)


class ExportWeights(pl.Callback):
    """At the end of fit, save the best checkpoint's network as a plain state_dict at a stable path.

    Refuses (before training) to replace an existing file unless `overwrite`, so a rerun
    never silently replaces weights that fine-tuning runs were made from.

    Args:
        path: where the state_dict goes (a `.json` beside it records its origin).
        overwrite: replace an existing file.
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        self.path, self.overwrite = Path(path), overwrite

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.path.exists() and not self.overwrite and trainer.ckpt_path is None:
            raise ConfigError(
                f"{self.path} already exists (see {self.path.with_suffix('.json')} for the run it came from): "
                "refusing to replace it. Move it away, or pass callbacks.export_weights.overwrite=true, or "
                "callbacks.export_weights.path=<another file>."
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        state = read_state_dict(best) if best else {k: v.cpu() for k, v in pl_module.net.state_dict().items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)  # atomic: a kill leaves the old file or the new one
        score = None if ckpt is None or ckpt.best_model_score is None else float(ckpt.best_model_score)
        origin = {"checkpoint": best, "val/acc": None if score is None or math.isnan(score) else score}
        write_json(self.path.with_suffix(".json"), origin)
        log.info("Exported the network weights of %s to %s", best or "the last epoch", self.path)
