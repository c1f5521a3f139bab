"""The bundled MNIST-pretrained weights: intact, as good as their cards say, and where fine-tuning starts."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from hydra.utils import instantiate

from mnist_lab.config import build_run, validate
from mnist_lab.errors import ConfigError
from mnist_lab.pretrained import MODELS, weights_path
from mnist_lab.tools.pretrain import mnist_test_accuracy
from mnist_lab.train import train
from mnist_lab.weights import card_path, read_card, read_state_dict, sha256
from tests.conftest import TINY, compose_config


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.slow
def test_bundled_weights_match_their_card(model):
    weights = weights_path(model)
    card = read_card(weights)
    assert sha256(weights) == card["sha256"] and weights.stat().st_size == card["size_bytes"]
    net = instantiate(card["model"])
    net.load_state_dict(read_state_dict(weights))  # strict: every name and shape fits
    # Inference with fixed weights is all but machine-independent: another CPU may flip the
    # argmax of a near-tie, so up to 3 of the 10,000 test images may differ from the card.
    assert mnist_test_accuracy(net) == pytest.approx(card["test_acc"], abs=3e-4)
    assert card["test_acc"] > 0.97 and 0 < card["val_acc"] <= 1  # a real pretraining, not a stub
    assert card["command"].startswith("mnist-lab experiment=pretrain_mnist") and card["commit"]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_default_finds_its_bundled_weights(model):
    cfg = compose_config(["finetune=freeze_conv" if model != "mlp" else "finetune=full", f"model={model}"])
    validate(cfg)
    assert build_run(cfg).finetune.checkpoint == str(weights_path(model))


@pytest.mark.slow
def test_freeze_conv_starts_from_the_bundled_weights_and_keeps_the_convs(tmp_path, caplog):
    cfg = compose_config(
        [*TINY, "finetune=freeze_conv", "data=uci_digits", "data.train_size=null", "logger=none", "test=false"],
        tmp_path / "run",
    )
    with caplog.at_level(logging.INFO, logger="mnist_lab.train"):
        train(cfg)
    assert "bundled weights pretrained/mnist_cnn.pt" in caplog.text and "MNIST test accuracy" in caplog.text
    assert "the target is MNIST itself" not in caplog.text
    bundled = read_state_dict(weights_path("cnn"))
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in (k for k in bundled if k.startswith(("conv1.", "conv2."))):
        assert torch.equal(trained[f"net.{key}"], bundled[key]), key
    assert not torch.equal(trained["net.head.weight"], bundled["head.weight"])  # the head trained


@pytest.mark.slow
def test_fine_tuning_on_mnist_says_it_is_the_pretraining_data(tmp_path, caplog):
    cfg = compose_config([*TINY, "finetune=linear_probe", "logger=none", "test=false"], tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="mnist_lab.train"):
        train(cfg)
    assert "the target is MNIST itself" in caplog.text


def test_a_model_without_bundled_weights_stops_before_training(tmp_path):
    cfg = compose_config(["finetune=freeze_conv", "model.conv1_channels=16", "model.conv2_channels=32"], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    message = str(e.value)
    assert "`finetune.checkpoint` = 'bundled'" in message and "conv1_channels=16" in message
    assert "experiment=pretrain_mnist" in message and "finetune.checkpoint=<that run directory>" in message


def test_a_card_from_before_an_option_fits_the_option_at_its_default():
    from mnist_lab.pretrained import bundled_for

    card = read_card(weights_path("cnn"))["model"]
    assert "norm_after_pool" not in card  # the weights predate the option
    cnn = compose_config([]).model
    assert bundled_for(cnn) == (weights_path("cnn"), read_card(weights_path("cnn")))
    assert bundled_for(compose_config(["model.norm_after_pool=false"]).model) is not None
    assert bundled_for(compose_config(["model.batch_norm=true", "model.norm_after_pool=true"]).model) is None


def test_none_trains_from_the_initial_weights():
    assert build_run(compose_config(["finetune=none"])).finetune.checkpoint is None


def test_cards_are_json_beside_their_weights():
    for model in MODELS:
        assert json.loads(card_path(weights_path(model)).read_text())["model"]["_target_"].startswith(
            "mnist_lab.models."
        )
