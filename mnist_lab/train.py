"""The training recipe: config in, trained and tested model plus metrics.json out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from mnist_lab.callbacks import EpochTimer
from mnist_lab.errors import ConfigError
from mnist_lab.module import Classifier
from mnist_lab.utils import environment_record, flatten, write_json

# The final metrics a run reports; the HParams tab shows these beside the flattened config.
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc_best", "train_seconds")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate every epoch, test the best checkpoint; return the final metrics."""
    output_dir = Path(cfg.paths.output_dir)
    if (output_dir / "metrics.json").exists() and cfg.get("ckpt_path") is None:
        raise ConfigError(
            f"{output_dir} already holds a finished run (metrics.json): refusing to overwrite it. "
            "Choose another paths.output_dir (the default makes a new time-stamped one per run)."
        )
    pl.seed_everything(cfg.seed, workers=True)

    # 1. Data, model and the LightningModule that trains it.
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    module = Classifier(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.scheduler),
        scheduler_interval=cfg.scheduler.interval,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.channels_last,
    )

    # 2. Callbacks, loggers, trainer.
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks.append(timer := EpochTimer())
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.get("logger") else []
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    # 3. Fit, then test the best checkpoint (the last weights when there is no checkpointing).
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - start
    val_acc_best = trainer.callback_metrics.get("val/acc_best")
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    metrics: dict[str, Any] = {}
    if cfg.test:
        (tested,) = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({k: v.item() if hasattr(v, "item") else v for k, v in tested.items()})
    metrics.update(
        {
            "val/acc_best": None if val_acc_best is None else val_acc_best.item(),
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "train_seconds": train_seconds,
            "epoch_seconds": timer.epoch_seconds,
            "best_checkpoint": best,
        }
    )

    # 4. Records: metrics.json, the environment, and the HParams tab with the real metrics.
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        write_json(output_dir / "environment.json", environment_record())
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                log_hparams(lg, cfg, metrics)
    return metrics


def log_hparams(logger: TensorBoardLogger, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Fill TensorBoard's HParams tab: the flattened config against the run's final metrics.

    Lightning's own log_hyperparams would log the metrics again as scalars at step 0; the
    scalars test/acc etc. already exist, so only the summary that links them is written.
    """
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith(("paths/", "hydra/"))}
    final = {k: float(metrics[k]) for k in HPARAM_METRICS if metrics.get(k) is not None}
    # val/acc_best and test/* are scalars already (logged by the loops); train time is not.
    logger.experiment.add_scalar("time/train_seconds", metrics["train_seconds"], metrics["global_steps"])
    final = {k.replace("train_seconds", "time/train_seconds"): v for k, v in final.items()}
    file_writer = logger.experiment._get_file_writer()
    for summary in hparams(params, final):
        file_writer.add_summary(summary)
    logger.experiment.flush()
