"""Interrupted runs resume exactly; signals save a checkpoint; runs are deterministic; writes are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lab import ROOT_DIR
from mnist_lab.checkpoints import AtomicCheckpointIO
from mnist_lab.data import TensorBatches
from mnist_lab.errors import ConfigError, NonFiniteLossError, RunInterrupted
from mnist_lab.rundir import check_output_dir, resume_argv
from mnist_lab.train import NOT_REPRODUCIBLE, train
from tests.conftest import TINY, compose_config, run_entry_point

# Two epochs of 8 steps with everything that has state: dropout and augmentation (global
# RNG), SGD momentum, a per-step OneCycle schedule, val/acc_best, the shuffled order.
RUN = [
    *TINY,
    "data.train_size=512",
    "trainer.max_epochs=2",
    "model.dropout=0.3",
    "data/augment=affine",
    "scheduler=onecycle",
    "checkpoint_every_n_steps=3",
]
STEPS_PER_EPOCH = 8


class Throttle(pl.Callback):
    """Test helper: records the step and sleeps after every training step, so a test can hit a run mid-epoch.

    Args:
        seconds: sleep per step (does not change any number the run computes).
        step_file: where the last finished step is written.
    """

    def __init__(self, seconds: float, step_file: str) -> None:
        self.seconds, self.step_file = seconds, step_file

    def on_train_batch_end(self, trainer, *args) -> None:
        Path(self.step_file).write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class SelfSignal(pl.Callback):
    """Test helper: the process sends itself `signum` after training step `at_step` (a real signal)."""

    def __init__(self, at_step: int, signum: int) -> None:
        self.at_step, self.signum = at_step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class Crash(pl.Callback):
    """Test helper: raises after training step `at_step`, as a crash would (no checkpoint of its own)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"crash at step {self.at_step}")


class CrashInTest(pl.Callback):
    """Test helper: raises as the test starts, once training has ended (a kill during the test)."""

    def on_test_start(self, trainer, pl_module) -> None:
        raise RuntimeError("crash in the test")


def run_main(*args: str) -> int:
    """`python -m mnist_lab args` in this process (no interpreter start-up); returns the exit status."""
    from mnist_lab.__main__ import cli

    return run_entry_point(cli, "mnist_lab", *args)


def start_cli(run_dir: Path, *args: str) -> subprocess.Popen:
    throttle = [
        "+callbacks.throttle._target_=tests.test_reliability.Throttle",
        "+callbacks.throttle.seconds=0.1",
        f"+callbacks.throttle.step_file={run_dir}/step.txt",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_lab", *RUN, *throttle, *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) first: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.01)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def reproducible(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NOT_REPRODUCIBLE}


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical final weights and metrics (all but wall-clock times and the run's own paths)."""
    mine, ref = json.loads((run / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert json.dumps(reproducible(mine), sort_keys=True) == json.dumps(reproducible(ref), sort_keys=True)
    a, b = weights(run / "checkpoints" / "last.ckpt"), weights(reference / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(compose_config(RUN, run))
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "run"
    proc = start_cli(run)
    last = run / "checkpoints" / "last.ckpt"
    wait_for(last.exists, proc)  # written atomically: it exists only once complete
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    step = torch.load(last, weights_only=True)["global_step"]
    assert step % STEPS_PER_EPOCH != 0, "the kill should land mid-epoch"
    overrides_before = (run / ".hydra" / "overrides.yaml").read_text()

    assert run_main(f"resume={run}", "callbacks.throttle.seconds=0") == 0
    assert_same_run(run, reference)
    # The same directory and TensorBoard run: the original record kept, the resume recorded beside it.
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides_before
    (resumed,) = (run / ".hydra").glob("resume-*")
    assert "callbacks.throttle.seconds=0" in (resumed / "overrides.yaml").read_text()
    assert not [p for p in (run / "tensorboard").iterdir() if p.is_dir()]  # no version_1/
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()  # both processes' event files, read as one run: every train/loss window is there
    assert {e.step for e in events.Scalars("train/loss")} == set(range(3, 2 * STEPS_PER_EPOCH, 4))
    assert json.loads((run / "environment.json").read_text())["mnist_lab"]


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint_exits_143_and_resumes_exactly(reference, tmp_path):
    run = tmp_path / "run"
    proc = start_cli(run, "checkpoint_every_n_steps=null")  # only the signal writes last.ckpt
    step_file = run / "step.txt"
    wait_for(lambda: step_file.exists() and step_file.read_text() not in ("", "1", "2"), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "SIGTERM received" in stderr and f"resume={run}" in stderr and "Traceback" not in stderr
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # loadable
    assert 3 <= ckpt["global_step"] < STEPS_PER_EPOCH and "Resumable" in ckpt["callbacks"]
    assert not (run / "metrics.json").exists()

    assert run_main(f"resume={run}", "callbacks.throttle.seconds=0") == 0
    assert_same_run(run, reference)


class LastCheckpointProbe(pl.Callback):
    """Test helper: at the start of each epoch after the first, appends last.ckpt's global_step to `log_file`."""

    def __init__(self, log_file: str) -> None:
        self.log_file = Path(log_file)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            step = torch.load(last, weights_only=True)["global_step"] if last.exists() else None
            with self.log_file.open("a") as f:
                f.write(f"{step}\n")


@pytest.mark.slow
def test_every_epoch_is_saved_also_without_validation(tiny_cfg, tmp_path, monkeypatch):
    """data.val_size=0: no validation to save after, so each epoch's end writes last.ckpt, the last one once."""
    log = tmp_path / "steps.txt"
    saves = []
    save = pl.Trainer.save_checkpoint
    monkeypatch.setattr(pl.Trainer, "save_checkpoint", lambda self, *a, **k: (saves.append(a[0]), save(self, *a, **k)))
    cfg = tiny_cfg(
        "logger=none",
        "data.val_size=0",
        "trainer.max_epochs=3",
        "+callbacks.probe._target_=tests.test_reliability.LastCheckpointProbe",
        f"+callbacks.probe.log_file={log}",
    )
    metrics = train(cfg)
    steps = -(-1024 // cfg.data.batch_size)
    assert log.read_text().split() == [str(steps), str(2 * steps)]  # written by the end of epochs 1 and 2
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3 * steps  # and at the end of training
    assert len(saves) == 3  # the last epoch's end is not saved twice
    assert metrics["best_checkpoint"] is None and metrics["test/acc"] > 0.1  # the last weights are tested


def test_ctrl_c_saves_checkpoint_at_that_step_and_restores_the_handler(tiny_cfg):
    # What was installed before the run: Python's default_int_handler, or SIG_IGN where the
    # suite was started by a process that ignores SIGINT (a shell's background job, nohup).
    before = signal.getsignal(signal.SIGINT)
    cfg = tiny_cfg(
        "logger=none",
        "+callbacks.interrupt._target_=tests.test_reliability.SelfSignal",
        "+callbacks.interrupt.at_step=5",
        f"+callbacks.interrupt.signum={int(signal.SIGINT)}",
    )
    with pytest.raises(RunInterrupted, match=r"SIGINT received: training stopped at step 5") as info:
        train(cfg)
    assert info.value.exit_code == 130
    run = Path(cfg.paths.output_dir)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert signal.getsignal(signal.SIGINT) is before
    assert not (run / "metrics.json").exists()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics_and_weights(reference, tmp_path):
    run = tmp_path / "run"
    train(compose_config(RUN, run))
    assert_same_run(run, reference)
    # What is left out of the comparison is only wall-clock time and the run's own path.
    metrics = json.loads((run / "metrics.json").read_text())
    left_out = set(metrics) - set(reproducible(metrics))
    assert {"train_seconds", "best_checkpoint"} <= left_out
    assert all(k.endswith("_seconds") or k == "best_checkpoint" for k in left_out)
    env = json.loads((run / "environment.json").read_text())
    assert {"mnist_lab", "torch", "pytorch_lightning", "hydra-core", "numpy", "git_commit"} <= set(env)
    assert env["hydra-core"] and env["numpy"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_cfg):
    cfg = tiny_cfg("logger=none", "optimizer.lr=1e6", "checkpoint_every_n_steps=1")
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "step" in message and "optimizer.lr" in message
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.exists():  # whatever was written before the divergence is finite
        assert f"{last}" in message
        assert all(torch.isfinite(v).all() for k, v in weights(last).items() if k.startswith("net."))
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_checkpoint_write_killed_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def dies_halfway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill during torch.save looks like from here

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_each_epoch_has_its_own_order_when_lightning_stops_at_len():
    # Lightning takes len(batches) batches and never exhausts the iterator.
    x, y = torch.arange(20).view(20, 1, 1, 1), torch.arange(20)
    batches = TensorBatches(x, y, batch_size=4, shuffle=True, seed=3)
    epochs = []
    for _ in range(3):
        it = iter(batches)
        epochs.append([next(it)[1].tolist() for _ in range(len(batches))])
    assert epochs[0] != epochs[1] != epochs[2]
    it = iter(batches)
    next(it), next(it)
    assert batches.state_dict() == {"epoch": 3, "served": 2}


def test_a_new_run_never_reuses_an_earlier_runs_directory(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="earlier, unfinished run"):
        check_output_dir(tmp_path, None)
    check_output_dir(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt"))  # resuming it: allowed
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished run"):
        check_output_dir(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt"))


def test_resume_argv_runs_the_saved_config_in_place(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    argv = resume_argv(["prog", f"resume={tmp_path}", "trainer.max_epochs=5"])
    assert argv[1:3] == [f"--config-path={tmp_path / '.hydra'}", "--config-name=config"]
    assert f"hydra.run.dir='{tmp_path}'" in argv and argv[-1] == "trainer.max_epochs=5"
    assert f"ckpt_path='{tmp_path}/checkpoints/last.ckpt'" in argv
    assert resume_argv(["prog", "model=mlp"]) == ["prog", "model=mlp"]


@pytest.mark.parametrize(
    "every,crash_at,saved_at",
    [(3, 11, 9), (None, 11, 8)],
    ids=["mid-epoch-checkpoint", "checkpoint-after-validation"],
)
@pytest.mark.slow
def test_fine_tune_state_survives_a_resume(tmp_path, every, crash_at, saved_at):
    # Gradual unfreezing: epoch 0 trains the head only, epoch 1 also fc1 (8 steps per epoch).
    # Resumed mid-epoch, Lightning skips on_train_epoch_start; resumed from the checkpoint of
    # epoch 0's validation (the default: no checkpoints within an epoch), the run starts epoch 1.
    run = [
        *TINY,
        "data.train_size=512",
        "trainer.max_epochs=2",
        "finetune=gradual_unfreeze",
        "test=false",
        "logger=none",
    ]
    run.append(f"checkpoint_every_n_steps={every or 'null'}")
    train(compose_config(run, tmp_path / "reference"))
    crashed = tmp_path / "crashed"
    crash = ["+callbacks.crash._target_=tests.test_reliability.Crash", f"+callbacks.crash.at_step={crash_at}"]
    with pytest.raises(RuntimeError, match=f"crash at step {crash_at}"):
        train(compose_config([*run, *crash], crashed))
    assert torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_at
    train(compose_config([*run, f"ckpt_path={crashed}/checkpoints/last.ckpt"], crashed))
    a, b = weights(crashed / "checkpoints" / "last.ckpt"), weights(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("extra", [[], ["data.val_size=0"]], ids=["validated", "without-validation"])
@pytest.mark.slow
def test_a_run_killed_in_its_test_resumes_to_the_test(tmp_path, extra):
    # The last.ckpt of the last validation (or epoch end) holds the final training state: a
    # resumed run trains no further and tests the same weights as an uninterrupted run.
    run = [*RUN, "logger=none", *extra]
    train(compose_config(run, tmp_path / "reference"))
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash in the test"):
        train(compose_config([*run, "+callbacks.crash._target_=tests.test_reliability.CrashInTest"], crashed))
    last = crashed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH
    assert not (crashed / "metrics.json").exists()
    train(compose_config([*run, f"ckpt_path={last}"], crashed))
    assert_same_run(crashed, tmp_path / "reference")
