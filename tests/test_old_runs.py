"""Run directories written by an earlier version still evaluate, predict and resume.

tests/assets/run_a52b964 is a LeNet-5 run (2,048 MNIST images, one epoch) trained by the code
of commit a52b964, before the package was split into data/, callbacks/, config/, tools/:
its .hydra/ config, environment.json and checkpoints as that code wrote them, metrics.json
removed so that it can be resumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from mnist_lab import ROOT_DIR
from mnist_lab.config.migrate import RENAMED, migrate
from mnist_lab.data import IDXSource
from tests.conftest import run_entry_point

ASSET = Path(__file__).parent / "assets" / "run_a52b964"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "old_run"
    shutil.copytree(ASSET, run)
    return run


@pytest.mark.slow
def test_old_run_evaluates(old_run, tmp_path):
    from mnist_lab.tools.evaluate import main

    code = run_entry_point(main, "evaluate", f"ckpt_path={old_run}", f"hydra.run.dir={tmp_path}/eval")
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 10_000 and "best-epoch000" in metrics["checkpoint"]
    assert metrics["test/acc"] > 0.2  # the asset's network is far from chance (10%): its weights loaded


def test_old_run_predicts(old_run, tmp_path):
    from mnist_lab.tools.predict import main

    digit = IDXSource(str(ROOT_DIR / "data" / "mnist")).load().test_x[0, 0].numpy()
    Image.fromarray(digit).save(tmp_path / "digit.png")
    code = run_entry_point(
        main, "predict", f"ckpt_path={old_run}", f"inputs={tmp_path / 'digit.png'}", f"hydra.run.dir={tmp_path}/pred"
    )
    assert code == 0
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("digit.png") == 1


@pytest.mark.slow
def test_old_run_resumes(old_run):
    from mnist_lab.__main__ import cli

    before = torch.load(old_run / "checkpoints" / "last.ckpt", weights_only=True)
    code = run_entry_point(
        cli, "mnist_lab", f"resume={old_run}", "trainer.max_epochs=2", "test=false", "callbacks.progress_bar=null"
    )
    assert code == 0
    after = torch.load(old_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (before["epoch"], after["epoch"]) == (1, 2) and after["global_step"] == 2 * before["global_step"]
    assert json.loads((old_run / "metrics.json").read_text())["epochs"] == 2


def test_moved_targets_are_renamed():
    old = OmegaConf.create(
        {
            "data": {"source": {"_target_": "mnist_lab.sources.UCIDigitsSource", "box": 20}},
            "callbacks": {"export_weights": {"_target_": "mnist_lab.finetune.ExportWeights"}},
        }
    )
    new = migrate(old)
    assert new.data.source._target_ == "mnist_lab.data.UCIDigitsSource" and new.data.source.box == 20
    assert new.callbacks.export_weights._target_ == "mnist_lab.callbacks.ExportWeights"
    from hydra.utils import get_object

    for target in RENAMED.values():  # every new home imports
        get_object(target)
