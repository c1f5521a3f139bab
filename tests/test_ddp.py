"""trainer=ddp_cpu: 2 gloo processes per job of a sweep; failures recorded; single-process accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.plugins.environments import ClusterEnvironment

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
    """A plain local start gets a JobEnvironment; a started rank and SLURM keep the environment Lightning detects."""
    from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment

    from mnist_lab.distributed import DDPStrategy, JobEnvironment

    def environment():
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy("gloo"), logger=False)
        return trainer.strategy.cluster_environment

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_", "LSB_", "OMPI_", "PMI_"))]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    plain = environment()
    assert type(plain) is JobEnvironment and plain.creates_processes_externally  # Lightning starts none

    monkeypatch.setenv("LOCAL_RANK", "1")  # how rank 1 of a job starts (mnist_lab.distributed.start_ranks)
    assert type(environment()) is LightningEnvironment
    monkeypatch.delenv("LOCAL_RANK")

    # One task of `srun --ntasks-per-node=2`: SLURM started both processes.
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "n1"}
    for key, value in {**slurm, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    assert type(environment()) is SLURMEnvironment


def test_every_environment_lightning_detects_is_listed_as_one_whose_processes_exist():
    """Fails when Lightning exports a new ClusterEnvironment: if the Trainer detects it, list it in EXTERNAL_ENVIRONMENTS."""
    import pytorch_lightning.plugins.environments as environments

    from mnist_lab.distributed import EXTERNAL_ENVIRONMENTS

    exported = {c for c in vars(environments).values() if isinstance(c, type) and issubclass(c, ClusterEnvironment)}
    # The base class, the local fallback, and the two the Trainer never detects: XLA comes with
    # the TPU accelerator, Kubeflow is passed as a plugin (its detect() raises).
    others = {ClusterEnvironment, environments.LightningEnvironment, environments.XLAEnvironment}
    assert exported - others - {environments.KubeflowEnvironment} == set(EXTERNAL_ENVIRONMENTS)


def test_a_started_rank_reruns_this_job_from_its_own_config_directory(tmp_path):
    """job_command reads the job's primary config directory from HydraConfig (hydra.runtime.config_sources)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mnist_lab import CONF_DIR
    from mnist_lab.distributed import job_command

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["seed=3"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")  # set by Hydra when a job runs, not by compose
    HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = job_command(1)
    finally:
        HydraConfig.instance().cfg = None
    assert command[1:] == [
        "-m",
        "mnist_lab",
        f"--config-path={CONF_DIR}",
        "--config-name=config",
        "seed=3",
        f'++hydra.run.dir="{tmp_path / "run"}"',
        "hydra.output_subdir=null",
        "hydra.job.name=ddp_rank1",
    ]
    assert cwd == cfg.hydra.runtime.cwd


@pytest.mark.slow
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
    single = metrics_tested_in_one_process(run, metrics["best_checkpoint"], tmp_path / "single")
    assert single["test/acc"] == metrics["test/acc"]
    assert abs(single["test/loss"] - metrics["test/loss"]) < 1e-5  # summed in another order


def metrics_tested_in_one_process(run, checkpoint: str, output_dir) -> dict:
    """The test metrics of `checkpoint`, from a DDP run's directory, tested here in one process."""
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    cfg = compose_config([o for o in overrides if not o.startswith("trainer=")], output_dir)
    module = Classifier(
        net=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        num_classes=cfg.data.num_classes,
        channels_last=cfg.channels_last,
    )
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.test(module, datamodule=instantiate(cfg.data), ckpt_path=checkpoint)
    return single
