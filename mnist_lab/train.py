"""The training recipe: config in, trained and tested model plus metrics.json out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from mnist_lab.callbacks import EpochTimer
from mnist_lab.finetune import load_pretrained
from mnist_lab.module import Classifier, NonFiniteLossError
from mnist_lab.resume import AtomicCheckpointIO, Resumable, check_output_dir, describe_checkpoint
from mnist_lab.schema import setup_data, validate
from mnist_lab.utils import environment_record, flatten, write_json

# The final metrics a run reports; the HParams tab shows these beside the flattened config.
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc_best", "train_seconds")
# metrics.json fields that differ between two runs of the same config and seed: wall-clock
# times, and the best checkpoint's path (it lies in the run's own directory). Every other
# field is bit-identical on CPU (tests/test_reliability.py checks it).
NOT_REPRODUCIBLE = ("train_seconds", "test_seconds", "epoch_seconds", "val_seconds", "best_checkpoint")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate every epoch, test the best checkpoint; return the final metrics."""
    # 0. Fail fast: keys, types, ranges, files and model/checkpoint fit, before any data is read;
    # never write into an earlier run's directory unless resuming it.
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir, cfg.get("ckpt_path"))
    if not (output_dir / "environment.json").exists():  # a resumed run keeps its first record
        write_json(output_dir / "environment.json", environment_record())
    pl.seed_everything(cfg.seed, workers=True)

    # 1. Data, model and the LightningModule that trains it.
    datamodule = setup_data(cfg)  # reads the files: bad files and labels_per_class fail here
    net = instantiate(cfg.model)
    # 1b. Fine-tuning (conf/finetune): check the strategy's group names against the model,
    # then start from the pretrained weights if finetune.checkpoint is set; both fail here,
    # before training. A resumed run (ckpt_path) takes all its weights from ckpt_path instead.
    finetune = instantiate(cfg.finetune)
    finetune.bind(net)
    if finetune.checkpoint and cfg.get("ckpt_path") is None:
        load_pretrained(net, finetune.checkpoint)
    module = Classifier(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.scheduler),
        scheduler_interval=cfg.scheduler.interval,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.channels_last,
        finetune=finetune,
        config={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")},  # for checkpoints
    )

    # 2. Callbacks, loggers, trainer.
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks.append(timer := EpochTimer())
    # last.ckpt after every validation, every N steps and on SIGINT/SIGTERM; RNG states in it.
    resumable = Resumable(output_dir / "checkpoints", cfg.get("checkpoint_every_n_steps"))
    if cfg.trainer.get("enable_checkpointing", True):  # Lightning refuses checkpoint callbacks otherwise
        callbacks.append(resumable)
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.get("logger") else []
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    # 3. Fit, then test the best checkpoint (the last weights when there is no checkpointing).
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e} {describe_checkpoint(resumable.last_path)}") from e
    train_seconds = resumable.train_seconds()  # resumed runs: all parts together
    # Read now: trainer.test(ckpt_path=best) restores callback states from that checkpoint.
    epoch_seconds, val_seconds = list(timer.epoch_seconds), list(timer.val_seconds)
    val_acc_best = trainer.callback_metrics.get("val/acc_best")
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
            "val/acc_best": None if val_acc_best is None else val_acc_best.item(),
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds,  # the training batches of each epoch
            "val_seconds": val_seconds,  # each epoch's validation
            "best_checkpoint": best,
        }
    )

    # 4. Records: metrics.json, the environment, and the HParams tab with the real metrics.
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
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
    # val/acc_best and test/* are scalars already (logged by the loops); train time is not,
    # so it is logged here under a tag of its own and the HParams tab links that tag.
    tags = {k: "time/train_seconds" if k == "train_seconds" else k for k in HPARAM_METRICS}
    final = {tags[k]: float(metrics[k]) for k in HPARAM_METRICS if metrics.get(k) is not None}
    logger.experiment.add_scalar(tags["train_seconds"], metrics["train_seconds"], metrics["global_steps"])
    file_writer = logger.experiment._get_file_writer()
    for summary in hparams(params, final):
        file_writer.add_summary(summary)
    logger.experiment.flush()
