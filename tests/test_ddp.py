"""trainer=ddp_cpu: 2 gloo processes per job of a sweep; failures recorded; single-process accuracy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_lab.classifier import Classifier
from mnist_lab.data import TensorBatches
from tests.conftest import TINY, compose_config


def test_eval_shards_count_every_sample_once_and_train_shards_match():
    x, y = torch.zeros(1003, 1, 1, 1), torch.arange(1003)
    evaluated = [torch.cat([b for _, b in TensorBatches(x, y, 100, False, rank=r, world_size=2)]) for r in (0, 1)]
    assert torch.equal(torch.cat(evaluated).sort().values, y)  # no padding, no duplicates
    trained = [TensorBatches(x, y, 100, True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(trained[0]) == len(trained[1]) == 6  # ceil(ceil(1003 / 2) / 100): same steps on every rank
    seen = torch.cat([b for t in trained for _, b in t])
    assert len(seen) == 1004 and len(seen.unique()) == 1003  # one sample padded, as DistributedSampler


def test_the_job_not_lightning_starts_the_extra_ranks(monkeypatch):
    """The Trainer's plain local environment becomes a JobEnvironment; a started rank keeps Lightning's."""
    from pytorch_lightning.plugins.environments import LightningEnvironment

    from mnist_lab.distributed import DDPStrategy, JobEnvironment

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy("gloo"), logger=False)
    environment = trainer.strategy.cluster_environment
    assert type(environment) is JobEnvironment and environment.creates_processes_externally  # Lightning starts none

    monkeypatch.setenv("LOCAL_RANK", "1")  # how rank 1 of a job starts (mnist_lab.distributed.start_ranks)
    strategy = DDPStrategy("gloo")
    strategy.cluster_environment = LightningEnvironment()  # what the Trainer does
    assert type(strategy.cluster_environment) is LightningEnvironment


def test_ddp_cpu_sweep_survives_a_failing_job_and_tests_to_the_single_process_accuracy(tmp_path):
    """Job 0 diverges (NaN loss on both ranks) and is recorded; job 1 then starts ranks of its own."""
    sweep = tmp_path / "sweep"
    # The whole test set (10,000 images): limit_test_batches would count batches per rank.
    tiny = [o for o in TINY if not o.startswith(("trainer.limit_test_batches", "optimizer.lr"))]
    result = subprocess.run(
        [sys.executable, "-m", "mnist_lab", "-m", *tiny, "data.eval_batch_size=1000", "trainer=ddp_cpu"]
        + ["logger=none", "optimizer.lr=1e4,0.05", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "became nan" in (sweep / "0" / "error.txt").read_text()
    run = sweep / "1"
    assert (run / "ddp_rank1.log").exists()  # rank 1 ran this job, in this directory
    assert not (sweep / "0" / "metrics.json").exists() and len(list(sweep.glob("*/metrics.json"))) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_steps"] == 8  # 1,024 images / 2 ranks / batch 64: each rank half an epoch

    # The same checkpoint tested in this one process gives exactly the same accuracy.
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    cfg = compose_config([o for o in overrides if not o.startswith("trainer=")], tmp_path / "single")
    module = Classifier(
        net=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        num_classes=cfg.data.num_classes,
        channels_last=cfg.channels_last,
    )
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.test(module, datamodule=instantiate(cfg.data), ckpt_path=metrics["best_checkpoint"])
    assert single["test/acc"] == metrics["test/acc"]
    assert abs(single["test/loss"] - metrics["test/loss"]) < 1e-5  # summed in another order
