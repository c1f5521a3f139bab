"""A battery of bad inputs: each exits non-zero with one clear paragraph and touches no earlier output.

Config values, data files, checkpoints, run directories and images, each through the real
command line (`python -m mnist_lab` / `python -m mnist_lab predict`, run in this process to
skip the interpreter start-up). Every case checks the exit status, the key phrases of the
message, that no traceback is printed, that the failed run wrote no checkpoint or metrics,
and that a finished earlier run is byte for byte unchanged.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lab.config import Origins, validate
from mnist_lab.errors import ConfigError
from mnist_lab.models import CNN
from tests.conftest import MNIST_DIR, TINY, compose_config, run_entry_point
from tests.test_reliability import run_main

FINISHED = "{finished}"  # placeholders filled in per case
BAD = "{bad}"
NEEDS_NO_GPU = {"gpu-trainer-without-a-gpu", "gpu-accelerator-without-a-gpu"}  # where a GPU exists, they train

# (id, command, arguments, exit status, phrases the message must contain)
CASES = [
    # --- config: wrong values, wrong types, unknown keys (the schema, before data is read) ---
    (
        "negative-batch-size",
        "train",
        ["data.batch_size=-4"],
        1,
        ["`data.batch_size` = -4", "batch size", "command-line override"],
    ),
    ("zero-learning-rate", "train", ["optimizer.lr=0"], 1, ["`optimizer.lr` = 0", "> 0"]),
    ("learning-rate-not-a-number", "train", ["optimizer.lr=fast"], 1, ["optimizer.lr", "wrong type", "a number"]),
    ("zero-epochs", "train", ["trainer.max_epochs=0"], 1, ["`trainer.max_epochs` = 0", ">= 1"]),
    ("fractional-epochs", "train", ["trainer.max_epochs=2.5"], 1, ["trainer.max_epochs", "an integer"]),
    (
        "misspelt-trainer-key",
        "train",
        ["+trainer.max_epoch=3"],
        1,
        ["trainer.max_epoch", "unknown key", "`max_epochs`"],
    ),
    ("misspelt-model-key", "train", ["+model.hiden=3"], 1, ["model.hiden", "unknown key", "`hidden`"]),
    ("dropout-above-one", "train", ["model.dropout=1.5"], 1, ["model.dropout", "[0, 1)"]),
    ("bad-scheduler-interval", "train", ["scheduler.interval=hour"], 1, ["scheduler.interval", "'epoch' or 'step'"]),
    ("bad-precision", "train", ["trainer.precision=33"], 1, ["trainer.precision", "'32-true'"]),
    ("negative-seed", "train", ["seed=-1"], 1, ["`seed` = -1", "4294967295"]),
    ("unknown-group-option", "train", ["model=nope"], 1, ["model/nope", "lenet5", "mlp"]),
    ("override-of-a-key-that-does-not-exist", "train", ["trainer.max_epoch=3"], 1, ["trainer.max_epoch"]),
    ("finetune-group-the-model-lacks", "train", ["model=mlp", "finetune=freeze_conv"], 1, ["conv1", "MLP", "fc1"]),
    (
        "missing-finetune-checkpoint",
        "train",
        ["finetune.checkpoint=/nonexistent/pretrained.ckpt"],
        1,
        ["finetune.checkpoint", "does not exist"],
    ),
    (
        "labels-per-class-beyond-the-data",
        "train",
        ["data.labels_per_class=100000"],
        1,
        ["data.labels_per_class=100000", "command-line override"],
    ),
    # --- config: values that do not fit each other, the dataset or the machine (still before data is read) ---
    (
        "model-head-smaller-than-the-classes",
        "train",
        ["model.num_classes=5"],
        1,
        ["`model.num_classes` = 5", "data.num_classes=10", "command-line override"],
    ),
    (
        "norm-after-pool-without-batch-norm",
        "train",
        ["model.norm_after_pool=true"],
        1,
        ["`model.norm_after_pool` = True", "model.batch_norm=False", "set model.batch_norm=true"],
    ),
    (
        "batch-larger-than-the-training-split",
        "train",
        ["data.batch_size=1000000000"],
        1,
        ["`data.batch_size` = 1000000000", "training split", "at most 1024", "data.train_size"],
    ),
    (
        "gpu-trainer-without-a-gpu",
        "train",
        ["trainer=gpu"],
        1,
        ["`trainer.accelerator` = 'gpu'", "no CUDA GPU", "CPU cores", "`trainer=cpu`", "conf/trainer/gpu.yaml"],
    ),
    (
        "gpu-accelerator-without-a-gpu",
        "train",
        ["trainer.accelerator=gpu"],
        1,
        ["`trainer.accelerator` = 'gpu'", "no CUDA GPU", "`trainer.accelerator=cpu`", "command-line override"],
    ),
    (
        "more-cpu-processes-than-cores",
        "train",
        ["trainer.devices=100000"],
        1,
        ["`trainer.devices` = 100000", "accelerator=cpu", "CPU cores", "command-line override"],
    ),
    ("missing-resume-checkpoint", "train", ["ckpt_path=/nonexistent/last.ckpt"], 1, ["`ckpt_path`", "does not exist"]),
    ("loss-diverges", "train", ["optimizer.lr=1e6", "checkpoint_every_n_steps=1"], 1, ["NaN", "step", "optimizer.lr"]),
    # --- data files ---
    (
        "data-files-missing",
        "train",
        ["data.source.root={bad}/empty", "data.source.download=null"],
        1,
        ["not found", "data.source.root"],
    ),
    ("truncated-idx-file", "train", ["data.source.root={bad}/truncated"], 1, ["truncated", "train-images-idx3-ubyte"]),
    ("not-an-idx-file", "train", ["data.source.root={bad}/magic"], 1, ["not an IDX file"]),
    ("corrupt-gzip", "train", ["data.source.root={bad}/gzip"], 1, ["Cannot read the IDX file"]),
    ("image-and-label-counts-differ", "train", ["data.source.root={bad}/count"], 1, ["60000 images", "100 labels"]),
    (
        "image-and-label-files-swapped",
        "train",
        ["+data.source.train_images=train-labels-idx1-ubyte", "+data.source.train_labels=train-images-idx3-ubyte"],
        1,
        ["swapped"],
    ),
    # --- checkpoints ---
    ("garbage-checkpoint", "train", ["ckpt_path={bad}/garbage.ckpt"], 1, ["ckpt_path", "not a readable checkpoint"]),
    (
        "truncated-checkpoint",
        "train",
        ["ckpt_path={bad}/truncated.ckpt"],
        1,
        ["not a readable checkpoint", "truncated"],
    ),
    (
        "checkpoint-of-another-model",
        "train",
        ["model=mlp", "ckpt_path={finished}/checkpoints/last.ckpt"],
        1,
        ["different network", "MLP"],
    ),
    (
        "plain-weights-as-resume-checkpoint",
        "train",
        ["ckpt_path={bad}/weights.pt"],
        1,
        ["not a Lightning training checkpoint", "finetune.checkpoint"],
    ),
    # --- run directories ---
    ("resume-a-directory-that-is-no-run", "resume", ["resume={bad}/nope"], 1, ["not a run directory"]),
    ("resume-a-finished-run", "resume", ["resume={finished}"], 1, ["finished", "metrics.json"]),
    ("resume-before-the-first-checkpoint", "resume", ["resume={bad}/nockpt"], 1, ["no checkpoints/last.ckpt"]),
    ("new-run-into-an-earlier-runs-directory", "resume", ["hydra.run.dir={finished}"], 1, ["already holds a run"]),
    # --- images (python -m mnist_lab predict): per-file errors give exit 2 ---
    ("empty-image", "predict", ["inputs={bad}/empty.png"], 2, ["empty.png", "is empty"]),
    ("text-file-named-png", "predict", ["inputs={bad}/notes.png"], 2, ["notes.png", "not an image"]),
    ("truncated-image", "predict", ["inputs={bad}/truncated.png"], 2, ["truncated.png", "cannot be decoded"]),
    ("blank-image", "predict", ["inputs={bad}/blank.png"], 2, ["blank.png", "no ink"]),
    ("missing-image", "predict", ["inputs={bad}/absent.png"], 2, ["absent.png", "does not exist"]),
    (
        "predict-with-an-unrotated-extra-view",
        "predict",
        ["inputs={bad}/digit.png", "tta_degrees=[0]"],
        1,
        ["tta_degrees=[0]", "non-zero"],
    ),
    (
        "predict-with-a-corrupt-checkpoint",
        "predict-ckpt",
        ["ckpt_path={bad}/garbage.ckpt", "inputs={bad}/blank.png"],
        1,
        ["garbage.ckpt"],
    ),
]


def run_predict(*args: str) -> int:
    """`python -m mnist_lab predict args` in this process; returns the exit status."""
    from mnist_lab.tools.predict import main

    return run_entry_point(main, "predict", *args)


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A real finished run: the earlier output that no bad input may touch."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    assert run_main(*TINY, "logger=none", f"hydra.run.dir={run}") == 0
    assert (run / "metrics.json").exists()
    return run


@pytest.fixture(scope="module")
def bad(tmp_path_factory, finished) -> Path:
    """Damaged dataset folders, checkpoints, run directories and images."""
    root = tmp_path_factory.mktemp("bad")
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    raw = {n: gzip.decompress((MNIST_DIR / f"{n}.gz").read_bytes()) for n in names[:2]}
    variants = {
        "truncated": {names[0]: raw[names[0]][:100_000]},
        "magic": {names[0]: b"this is a text file, not IDX\n" * 10},
        "gzip": {f"{names[0]}.gz": b"\x1f\x8b\x08\x00 not really gzip"},
        "count": {names[1]: idx(np.zeros(100))},
    }
    for variant, files in variants.items():
        folder = root / variant
        folder.mkdir()
        for n in names:
            if n not in files and f"{n}.gz" not in files:
                (folder / f"{n}.gz").symlink_to(MNIST_DIR / f"{n}.gz")
        for n, data in files.items():
            (folder / n).write_bytes(data)
    (root / "empty").mkdir()
    last = (finished / "checkpoints" / "last.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(last[: len(last) // 2])  # what a kill mid-write used to leave
    (root / "garbage.ckpt").write_bytes(b"not a checkpoint at all" * 100)
    torch.save(CNN().state_dict(), root / "weights.pt")
    (root / "nockpt" / ".hydra").mkdir(parents=True)
    shutil.copy(finished / ".hydra" / "config.yaml", root / "nockpt" / ".hydra" / "config.yaml")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("shopping list: milk, eggs\n")
    digit = np.full((64, 64), 255, np.uint8)
    digit[16:48, 28:36] = 0  # a dark stroke: a "1"
    Image.fromarray(digit).save(root / "digit.png")
    (root / "truncated.png").write_bytes((root / "digit.png").read_bytes()[:60])
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "blank.png")
    return root


@pytest.mark.parametrize("name,command,args,status,phrases", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_loses_nothing(
    name, command, args, status, phrases, finished, bad, tmp_path, capsys
):
    if name in NEEDS_NO_GPU and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        pytest.skip("this machine has a GPU")
    before = snapshot(finished)
    args = [a.format(finished=finished, bad=bad) for a in args]
    phrases = [p.format(finished=finished, bad=bad) for p in phrases]
    case_dir = tmp_path / "run"
    if command == "train":
        picks_accelerator = any(a.startswith(("trainer=", "trainer.accelerator=")) for a in args)
        tiny = [
            o for o in TINY if not (picks_accelerator and o.startswith("trainer.accelerator="))
        ]  # the case's own wins
        code = run_main(*tiny, "logger=none", *args, f"hydra.run.dir={case_dir}")
    elif command == "resume":
        code = run_main(*args)
    elif command == "predict":
        code = run_predict(f"ckpt_path={finished}/checkpoints/last.ckpt", *args, f"hydra.run.dir={case_dir}")
    else:
        code = run_predict(*args, f"hydra.run.dir={case_dir}")
    out = capsys.readouterr()
    message = out.err + out.out
    assert code == status, message[-3000:]
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} missing from: {out.err[-3000:]}"
    assert "Traceback" not in message
    assert snapshot(finished) == before  # the earlier run is untouched
    assert not (case_dir / "metrics.json").exists()
    if command == "train" and name != "loss-diverges":  # failed before training: no checkpoint at all
        assert not list(case_dir.glob("checkpoints/*.ckpt"))


def test_the_battery_covers_every_kind_of_input():
    kinds = {c[1] for c in CASES}
    assert len(CASES) >= 20 and {"train", "resume", "predict"} <= kinds
    assert len({c[0] for c in CASES}) == len(CASES)


def test_errors_name_where_a_value_came_from():
    origin = Origins([], {"experiment": "seed_baseline", "model": "cnn", "data": "mnist", "data/augment": "affine"})
    assert origin("trainer.max_epochs") == "the experiment file experiments/seed_baseline.yaml"
    assert origin("model.hidden") == "the config group file conf/model/cnn.yaml"
    assert origin("data.augment.degrees") == "the config group file conf/data/augment/affine.yaml"
    assert origin("channels_last") == "conf/config.yaml"
    origin = Origins(["model=mlp", "model.dropout=0.5"], {"model": "mlp"})
    assert origin("model.dropout") == "the command-line override `model.dropout=0.5`"
    assert (
        origin("model.hidden1")
        == "the config group file conf/model/mlp.yaml, chosen by the command-line override `model=mlp`"
    )


def test_several_problems_are_reported_together():
    cfg = compose_config(["data.batch_size=0", "optimizer.lr=-1", "+trainer.max_epoch=3"])
    with pytest.raises(ConfigError) as info:
        validate(cfg, overrides=[], choices={})
    paragraphs = str(info.value).split("\n\n")
    assert paragraphs[0] == "3 problems in the config:" and len(paragraphs) == 4


def test_hydra_full_error_gives_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="data.batch_size"):
        run_main(*TINY, "data.batch_size=0", f"hydra.run.dir={tmp_path}/run")


def test_the_training_split_is_counted_from_the_idx_header():
    cfg = compose_config(["data.batch_size=55001"])  # MNIST: 60000 - data.val_size 5000 = 55000
    with pytest.raises(
        ConfigError, match=r"at most 55000 images \(the source's 60000 training images minus data.val_size=5000\)"
    ):
        validate(cfg, overrides=[], choices={})
    validate(compose_config(["data.batch_size=55000"]), overrides=[], choices={})


@pytest.mark.parametrize(
    "devices,fits", [(1, True), (2, True), (-1, True), ("auto", True), ("'0,1'", True), (4, False), ([0, 2], False)]
)
def test_gpu_device_counts_are_checked_against_the_machine(devices, fits, monkeypatch):
    from mnist_lab.config.crosschecks import check_across

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 2 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    problems = check_across(compose_config(["trainer=gpu", f"trainer.devices={devices}"]))
    assert [p.path for p in problems] == ([] if fits else ["trainer.devices"])
    assert fits or "2 CUDA GPUs" in problems[0].reason


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value,hint,ok",
    [
        ([0.9, 0.999], tuple[float, float], True),  # YAML has lists where tuples are annotated
        ([0.9], tuple[float, float], False),
        (1, float, True),
        (True, int, False),
        ("3", int, False),
        (2.0, int, False),
        ("runs/a", str | Path, True),
        ("fast", float | torch.Tensor, False),
        (0.1, float | torch.Tensor, True),
        (3, torch.nn.Module, False),  # a scalar where an object is expected
        ([{"_target_": "torch.nn.ReLU"}], list[torch.nn.Module], True),  # nodes that instantiate builds
        (3, _Point, True),  # no schema to check against: unsure, so accepted
    ],
)
def test_yaml_values_against_annotations(value, hint, ok):
    from mnist_lab.config.types import conforms

    assert conforms(value, hint) is ok
