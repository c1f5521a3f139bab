"""evaluate: a checkpoint rebuilt from its run config scores as it did in training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mnist_lab.errors import ConfigError
from mnist_lab.tools.evaluate import class_scores, evaluate
from tests.conftest import compose_config

# The tests that assert on the model trained by the suite (conftest.trained_run).
trained_model = pytest.mark.trained_model


def test_class_scores_count_a_class_never_predicted_or_absent_as_zero():
    # Class 3 is neither in the labels nor predicted; class 4 is in the labels, never predicted.
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 0, 0, 4])
    confusion, precision, recall = class_scores(preds, target, 5)
    assert confusion.tolist() == [[2, 0, 1, 0, 0], [1, 2, 0, 0, 0], [0, 0, 1, 0, 0], [0] * 5, [1, 0, 0, 0, 0]]
    assert precision.tolist() == pytest.approx([2 / 4, 2 / 2, 1 / 2, 0, 0])  # correct / predicted as the class
    assert recall.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 1, 0, 0])  # correct / labelled as the class


@trained_model
@pytest.mark.slow
def test_evaluate_reproduces_the_runs_test_metrics(trained_run, tmp_path):
    cfg = compose_config([f"ckpt_path={trained_run}"], tmp_path / "eval", config_name="evaluate")
    metrics = evaluate(cfg)
    trained = json.loads((trained_run / "metrics.json").read_text())
    # The same best checkpoint on the same 10k test images: the rebuilt network is the trained one.
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-4)
    confusion = metrics["test/confusion_matrix"]
    assert sum(map(sum, confusion)) == metrics["num_examples"] == 10_000
    assert sum(confusion[k][k] for k in range(10)) / 10_000 == pytest.approx(metrics["test/acc"])
    recall = metrics["test/recall"]
    assert all(0 <= r <= 1 for r in recall + metrics["test/precision"])
    assert recall[3] == pytest.approx(confusion[3][3] / sum(confusion[3]))
    wrong = metrics["test/most_confident_wrong"]
    assert len(wrong) == 36 and all(w["true"] != w["pred"] for w in wrong)
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    assert (out / "figures" / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "figures" / "most_confident_wrong.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@trained_model
@pytest.mark.slow
def test_evaluate_on_the_validation_split_and_bad_values(trained_run, tmp_path):
    metrics = evaluate(
        compose_config([f"ckpt_path={trained_run}", "split=val"], tmp_path / "v", config_name="evaluate")
    )
    assert metrics["num_examples"] == 500  # the run's own data config: data.val_size=500
    with pytest.raises(ConfigError, match="split=train"):
        evaluate(compose_config([f"ckpt_path={trained_run}", "split=train"], tmp_path / "t", config_name="evaluate"))


@trained_model
@pytest.mark.slow
def test_evaluate_command_line(trained_run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lab",
            "evaluate",
            f"ckpt_path={trained_run}",
            "data=mnist",
            "data.eval_batch_size=2000",
            f"hydra.run.dir={tmp_path}/cli",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc" in result.stdout and "precision" in result.stdout
    assert (tmp_path / "cli" / "metrics.json").exists()


@trained_model
@pytest.mark.slow
def test_ensemble_averages_softmax_of_its_members(trained_run, tmp_path):
    single = evaluate(compose_config([f"ckpt_path={trained_run}"], tmp_path / "one", config_name="evaluate"))
    # The same network twice: the average of two equal softmax outputs is that output.
    twice = evaluate(
        compose_config(
            [f"ckpt_path={trained_run}", f"ensemble=[{trained_run}]"], tmp_path / "two", config_name="evaluate"
        )
    )
    assert twice["test/acc"] == single["test/acc"]
    assert twice["test/acc_members"] == pytest.approx([single["test/acc"]] * 2)
    assert twice["test/loss"] == pytest.approx(single["test/loss"], rel=1e-4)
    # Two equal members err on the same images, the ensemble on those too.
    errors = round((1 - single["test/acc"]) * single["num_examples"])
    assert twice["test/wrong_in_every_member"] == twice["test/wrong_in_some_member"] == errors
    # With the last checkpoint as a second member, each member keeps its own accuracy.
    last = trained_run / "checkpoints" / "last.ckpt"
    pair = evaluate(
        compose_config([f"ckpt_path={trained_run}", f"ensemble=[{last}]"], tmp_path / "pair", config_name="evaluate")
    )
    assert pair["test/acc_members"][0] == pytest.approx(single["test/acc"]) and len(pair["ensemble"]) == 1
    # Averaging two checkpoints of one run: not worse than the weaker by more than a point. A
    # property of averaging near-identical softmax outputs, whatever the machine's model is.
    assert min(pair["test/acc_members"]) - 0.01 <= pair["test/acc"] <= 1.0
    n, acc = pair["num_examples"], pair["test/acc_members"]
    every, some = pair["test/wrong_in_every_member"], pair["test/wrong_in_some_member"]
    assert every <= round((1 - max(acc)) * n) <= round((1 - min(acc)) * n) <= some  # intersection <= each <= union


@trained_model
@pytest.mark.slow
def test_test_time_augmentation_is_applied_to_every_member_and_recorded(trained_run, tmp_path):
    args = [f"ckpt_path={trained_run}", f"ensemble=[{trained_run}]", "num_wrong=0"]
    plain = evaluate(compose_config(args, tmp_path / "plain", config_name="evaluate"))
    tta = evaluate(compose_config([*args, "tta_degrees=[-8,8]"], tmp_path / "tta", config_name="evaluate"))
    assert plain["tta_degrees"] == [] and tta["tta_degrees"] == [-8.0, 8.0]
    assert json.loads((tmp_path / "tta" / "metrics.json").read_text())["tta_degrees"] == [-8.0, 8.0]
    # Equal members read with the same views stay equal; the views change the loss.
    assert tta["test/acc_members"][0] == tta["test/acc_members"][1] == pytest.approx(tta["test/acc"], abs=1e-6)
    assert tta["test/loss"] != pytest.approx(plain["test/loss"], rel=1e-4)
    with pytest.raises(ConfigError, match=r"tta_degrees=\[0\]"):
        evaluate(compose_config([*args, "tta_degrees=[0]"], tmp_path / "bad", config_name="evaluate"))
    assert not (tmp_path / "bad" / "metrics.json").exists()
