"""The training recipe: config in, trained and tested model plus metrics.json out."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import TensorBoardLogger

from mnist_lab.callbacks import EpochTimer, Resumable
from mnist_lab.checkpoints import AtomicCheckpointIO, describe_checkpoint
from mnist_lab.classifier import Classifier
from mnist_lab.config import Origins, build, build_run, validate
from mnist_lab.config.migrate import migrate
from mnist_lab.errors import NonFiniteLossError, UserError
from mnist_lab.files import write_json
from mnist_lab.pretrained import describe_start
from mnist_lab.records import environment_record, log_hparams, slow_bf16
from mnist_lab.rundir import check_output_dir
from mnist_lab.semisupervised import FixMatch, SemiSupervisedClassifier
from mnist_lab.weights import LAST, load_pretrained, read_checkpoint

# metrics.json fields that differ between two runs of the same config and seed: wall-clock
# times, and the best checkpoint's path (it lies in the run's own directory). Every other
# field is bit-identical on one machine (tests/test_reliability.py checks it).
log = logging.getLogger(__name__)

NOT_REPRODUCIBLE = ("train_seconds", "test_seconds", "epoch_seconds", "val_seconds", "best_checkpoint")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate every epoch, test the best checkpoint; return the final metrics."""
    # 0. Fail fast: keys, types, ranges, files and model/checkpoint fit, before any data is read;
    # never write into an earlier run's directory unless resuming it.
    cfg = migrate(cfg)
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir, cfg.get("ckpt_path"))
    if not (output_dir / "environment.json").exists():  # a resumed run keeps its first record
        write_json(output_dir / "environment.json", environment_record())

    # 1. Seed every RNG, then build the network and the fine-tune strategy: the initial weights
    # are a function of the seed alone.
    pl.seed_everything(cfg.seed, workers=True)
    net, finetune = build_run(cfg)

    # 2. Data, then the starting weights: pretrained ones when finetune.checkpoint is set (a
    # resumed run takes all its weights from ckpt_path instead).
    datamodule = setup_data(cfg)  # reads the files: bad files and labels_per_class fail here
    if finetune is not None and finetune.checkpoint and cfg.get("ckpt_path") is None:
        load_pretrained(net, finetune.checkpoint)
        log.info(describe_start(finetune.checkpoint, cfg.data))
    # A semi-supervised strategy also trains on the target's unlabelled images (mnist_lab/semisupervised.py).
    semi = isinstance(finetune, FixMatch)
    if semi:
        datamodule.use_unlabelled(finetune.ratio * cfg.data.batch_size, finetune.weak, finetune.strong)
    module = (SemiSupervisedClassifier if semi else Classifier)(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.scheduler),
        scheduler_interval=cfg.scheduler.interval,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.channels_last,
        finetune=finetune,
        config={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")},  # for checkpoints
    )

    # 3. Callbacks, loggers, trainer.
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks.append(timer := EpochTimer())  # the Classifier adds its FineTuneSchedule itself
    if cfg.trainer.get("enable_checkpointing", True):  # Lightning refuses checkpoint callbacks otherwise
        # last.ckpt after every validation, every N steps and on SIGINT/SIGTERM; RNG states in it.
        callbacks.append(Resumable(output_dir / "checkpoints", cfg.get("checkpoint_every_n_steps")))
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.get("logger") else []
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # ... and a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # No validation images (data.val_size=0): no validation loop, and no val/ score to choose a
    # checkpoint by, so no ModelCheckpoint on one; Resumable writes last.ckpt every epoch and
    # the last weights are tested.
    no_validation = {} if len(datamodule.splits.val_y) else {"limit_val_batches": 0}
    if no_validation:
        callbacks = [c for c in callbacks if not (isinstance(c, ModelCheckpoint) and str(c.monitor).startswith("val/"))]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()], **no_validation
    )
    if slow := slow_bf16(trainer):
        log.warning(slow)

    # 4. Fit, then test the best checkpoint (the last weights when there is no checkpointing).
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e} {describe_checkpoint(output_dir / 'checkpoints' / LAST)}") from e
    # Read now: trainer.test(ckpt_path=best) restores callback states from that checkpoint.
    train_seconds = timer.train_seconds()  # resumed runs: all parts together
    epoch_seconds, val_seconds = list(timer.epoch_seconds), list(timer.val_seconds)
    val_acc_best = module.best_val_acc()
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    metrics: dict[str, Any] = {}
    if cfg.test:
        start = time.perf_counter()
        (tested,) = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({k: v.item() if hasattr(v, "item") else v for k, v in tested.items()})
        metrics["test_seconds"] = time.perf_counter() - start
    metrics.update(
        {
            "val/acc_best": val_acc_best,
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds,  # the training batches of each epoch
            "val_seconds": val_seconds,  # each epoch's validation
            "best_checkpoint": best,
            "best_epoch": read_checkpoint(best)["epoch"] if best else None,  # 0-based, as in best-epochNNN
        }
    )

    # 5. Records: metrics.json, and the HParams tab with the real metrics.
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                log_hparams(lg, cfg, metrics)
    return metrics


def setup_data(cfg: DictConfig, overrides: list[str] | None = None, choices: dict[str, str | None] | None = None):
    """Instantiate and set up the data module: read the files, split, subset (labels_per_class).

    A UserError that names a key (`data.labels_per_class=...`) is re-raised with where that
    value came from.
    """
    datamodule = build(cfg.data)
    try:
        datamodule.setup("fit")
    except UserError as e:
        raise Origins.from_hydra(overrides, choices).attribute(e) from e
    return datamodule
