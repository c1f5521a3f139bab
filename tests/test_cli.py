"""`python -m mnist_lab` end to end in a subprocess: a single run and a 2-job multirun."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import TINY

# Every test here asserts on the model trained by the suite (conftest.trained_run or its own run).
pytestmark = pytest.mark.trained_model


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_lab", *args], capture_output=True, text=True, timeout=timeout)


def test_single_run_prints_config_and_writes_run_dir(tmp_path):
    result = run_cli(*TINY, f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optimizer" in result.stdout and "torch.optim.SGD" in result.stdout  # the config tree
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    assert json.loads((run / "metrics.json").read_text())["test/acc"] > 0.5
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_multirun_gives_one_run_dir_per_job(tmp_path):
    result = run_cli("-m", *TINY, "model=cnn,mlp", "logger=none", f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    targets = {json.loads(p.read_text())["test/acc"] > 0.3 for p in runs}
    assert targets == {True}
    overrides = {p.parent.joinpath(".hydra/overrides.yaml").read_text().count("model=") for p in runs}
    assert overrides == {1}


def test_bad_value_gives_one_paragraph_and_exit_1(tmp_path):
    result = run_cli(*TINY, "data.batch_size=-4", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 1
    assert "data.batch_size=-4" in result.stderr and "Traceback" not in result.stderr
