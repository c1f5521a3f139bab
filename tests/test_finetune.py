"""Fine-tuning strategies: what trains when, at which lr, resume, pretrained weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from mnist_lab import CONF_DIR
from mnist_lab.checkpoints import load_net
from mnist_lab.classifier import Classifier
from mnist_lab.config import build_run
from mnist_lab.data import DigitsDataModule, IDXSource, Splits
from mnist_lab.errors import CheckpointError, ConfigError
from mnist_lab.finetune import FineTune
from mnist_lab.models import CNN, MLP
from mnist_lab.train import train
from mnist_lab.weights import EXPORTED, find_weights, load_pretrained, read_card
from tests.conftest import MNIST_DIR, TINY, compose_config

GROUPS = ("conv1", "conv2", "fc1", "head")
# The groups that train in epoch 0 under each strategy of conf/finetune (the YAMLs' intent).
TRAINS_AT_START = {
    "none": set(GROUPS),
    "full": set(GROUPS),
    "discriminative_lr": set(GROUPS),
    "freeze_conv": {"fc1", "head"},
    "linear_probe": {"head"},
    "gradual_unfreeze": {"head"},
    "unfreeze_on_plateau": {"fc1", "head"},
    "fixmatch": set(GROUPS),  # discriminative_lr's groups, with the unlabelled loss beside
}


class FixedSource:
    """A source that returns the same in-memory splits every time."""

    def __init__(self, s: Splits) -> None:
        self.s = s

    def load(self) -> Splits:
        s = self.s
        return Splits(s.train_x, s.train_y, s.test_x, s.test_y, s.val_x, s.val_y)


class Recorder(pl.Callback):
    """Weights before training and after every epoch; lrs and requires_grad as each epoch begins."""

    def __init__(self) -> None:
        self.states, self.lrs, self.trainable, self.bn_training = [], [], [], []

    def on_train_start(self, trainer, module) -> None:
        self.states.append({k: v.clone() for k, v in module.net.state_dict().items()})

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:  # after the module's on_train_epoch_start applied the strategy
            self.lrs.append({g.get("name", "all"): g["lr"] for g in trainer.optimizers[0].param_groups})
            self.trainable.append(
                {g for g in GROUPS if all(p.requires_grad for p in getattr(module.net, g).parameters())}
            )
            bns = [
                (n.split(".")[0], m.training)
                for n, m in module.net.named_modules()
                if isinstance(m, torch.nn.BatchNorm2d)
            ]
            self.bn_training.append({g for g, training in bns if training})

    def on_train_epoch_end(self, trainer, module) -> None:
        self.states.append({k: v.clone() for k, v in module.net.state_dict().items()})


def changed(before: dict, after: dict) -> set[str]:
    """The layer groups with any tensor (weights or batch-norm statistics) not bit-for-bit equal."""
    return {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def small_mnist() -> Splits:
    s = IDXSource(str(MNIST_DIR)).load()  # 256 train (4 batches of 64), 200 val, 200 test
    return Splits(s.train_x[:256], s.train_y[:256], s.test_x[:200], s.test_y[:200], s.train_x[-200:], s.train_y[-200:])


def fit(splits: Splits, strategy: str, *overrides: str, epochs: int = 1, callbacks=()) -> tuple[Classifier, Recorder]:
    cfg = compose_config([f"finetune={strategy}", "optimizer.lr=0.05", *overrides])
    pl.seed_everything(0)
    net = instantiate(cfg.model)
    module = Classifier(
        net,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler.scheduler),
        cfg.scheduler.interval,
        finetune=instantiate(cfg.finetune),
    )
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder, *callbacks],
    )
    trainer.fit(module, datamodule=DigitsDataModule(FixedSource(splits), batch_size=64, eval_batch_size=200))
    return module, recorder


def test_every_strategy_yaml_has_an_expectation():
    assert {p.stem for p in (CONF_DIR / "finetune").glob("*.yaml")} == set(TRAINS_AT_START)


@pytest.mark.parametrize("strategy", sorted(TRAINS_AT_START))
@pytest.mark.slow
def test_strategy_trains_exactly_its_groups(small_mnist, strategy):
    """requires_grad and the change after 4 SGD steps match the strategy; frozen BN stats stay fixed."""
    _, rec = fit(small_mnist, strategy, "model.batch_norm=true", "optimizer.weight_decay=0.01")
    expected = TRAINS_AT_START[strategy]
    assert rec.trainable[0] == expected
    # Frozen groups: weights, biases and batch-norm running statistics all bit-for-bit equal
    # (weight decay 0.01 and momentum would move them if the optimizer touched them at all).
    assert changed(rec.states[0], rec.states[1]) == expected


class ForceDistributedMode(pl.Callback):
    """What Classifier.setup() sets when the trainer has several processes (DDP)."""

    def on_fit_start(self, trainer, module) -> None:
        module.finetune.distributed = True


@pytest.mark.slow
def test_distributed_mode_freezes_by_dropping_gradients(small_mnist):
    """Under DDP every parameter keeps requires_grad; frozen groups still stay bit-for-bit equal."""
    _, rec = fit(
        small_mnist,
        "freeze_conv",
        "model.batch_norm=true",
        "optimizer.weight_decay=0.01",
        callbacks=[ForceDistributedMode()],
    )
    assert rec.trainable[0] == set(GROUPS)
    assert rec.bn_training[0] == set()  # frozen batch norm still in eval mode
    assert changed(rec.states[0], rec.states[1]) == {"fc1", "head"}


def test_frozen_batch_norm_can_keep_updating_statistics(small_mnist):
    _, rec = fit(small_mnist, "freeze_conv", "model.batch_norm=true", "finetune.train_frozen_bn=true")
    before, after = rec.states
    assert torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])  # frozen weights
    assert torch.equal(before["conv1.1.weight"], after["conv1.1.weight"])  # frozen BN affine
    assert not torch.equal(before["conv1.1.running_mean"], after["conv1.1.running_mean"])  # statistics move


@pytest.mark.slow
def test_gradual_unfreeze_fires_at_its_epochs_and_schedulers_keep_working(small_mnist):
    module, rec = fit(
        small_mnist,
        "gradual_unfreeze",
        "scheduler=step",
        "scheduler.scheduler.step_size=1",
        "scheduler.scheduler.gamma=0.5",
        "model.batch_norm=true",
        epochs=4,
    )
    first_change = {g: min(e for e in range(4) if g in changed(rec.states[e], rec.states[e + 1])) for g in GROUPS}
    assert first_change == {"head": 0, "fc1": 1, "conv2": 2, "conv1": 3}
    assert rec.trainable == [{"head"}, {"head", "fc1"}, {"head", "fc1", "conv2"}, set(GROUPS)]
    # Batch norm (conv1.1, conv2.1) runs in eval mode while frozen and trains once unfrozen.
    assert rec.bn_training == [set(), set(), {"conv2"}, {"conv1", "conv2"}]
    # The param groups never change; StepLR halves every group's lr each epoch, and groups
    # that unfreeze keep their 0.1 multiplier (unfrozen_lr_scale) relative to the head.
    for epoch, lrs in enumerate(rec.lrs):
        assert list(lrs) == list(GROUPS)
        assert lrs["head"] == pytest.approx(0.05 * 0.5**epoch)
        for g in ("conv1", "conv2", "fc1"):
            assert lrs[g] == pytest.approx(0.1 * lrs["head"])
    assert len(module.trainer.optimizers[0].param_groups) == 4


@pytest.mark.parametrize(
    "scheduler",
    [
        ["scheduler=step", "scheduler.scheduler.step_size=1"],
        ["scheduler=cosine", "trainer.max_epochs=4"],  # T_max 4: one epoch moves the lr part-way
        ["scheduler=onecycle", "scheduler.scheduler.pct_start=0.5"],  # 4 steps: warm-up 2, anneal 2
    ],
    ids=["step", "cosine", "onecycle"],
)
@pytest.mark.slow
def test_discriminative_lr_multipliers_survive_schedulers(small_mnist, scheduler):
    module, rec = fit(small_mnist, "discriminative_lr", *scheduler)
    lrs = {g["name"]: g["lr"] for g in module.trainer.optimizers[0].param_groups}  # after the scheduler's steps
    assert lrs["head"] != pytest.approx(rec.lrs[0]["head"])  # the scheduler acted
    for depth, g in enumerate(reversed(GROUPS)):
        assert rec.lrs[0][g] == pytest.approx(rec.lrs[0]["head"] * 0.5**depth)
        assert lrs[g] == pytest.approx(lrs["head"] * 0.5**depth)


def test_explicit_group_lr(small_mnist):
    _, rec = fit(small_mnist, "discriminative_lr", "finetune.layer_decay=null", "finetune.group_lr={conv1: 0.01}")
    assert rec.lrs[0] == pytest.approx({"conv1": 0.0005, "conv2": 0.05, "fc1": 0.05, "head": 0.05})


@pytest.mark.slow
def test_none_without_checkpoint_is_a_plain_run(small_mnist):
    """finetune=none trains exactly as a Classifier without any fine-tuning strategy."""
    module, rec = fit(small_mnist, "none")
    assert len(module.trainer.optimizers[0].param_groups) == 1
    pl.seed_everything(0)
    plain = Classifier(CNN(), instantiate(compose_config(["optimizer.lr=0.05"]).optimizer))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(plain, datamodule=DigitsDataModule(FixedSource(small_mnist), batch_size=64, eval_batch_size=200))
    for k, v in plain.net.state_dict().items():
        assert torch.equal(v, rec.states[1][k]), k


@pytest.mark.slow
def test_plateau_unfreezes_the_next_group(small_mnist):
    # min_delta 1.0: no validation ever counts as an improvement, so with patience 1 the
    # first validation sets the reference and each later one unfreezes the next group.
    module, rec = fit(
        small_mnist,
        "unfreeze_on_plateau",
        "finetune.on_plateau.patience=1",
        "finetune.on_plateau.min_delta=1.0",
        epochs=3,
    )
    assert module.finetune.plateau_events == {2: "conv2", 3: "conv1"}
    assert rec.trainable == [{"fc1", "head"}, {"fc1", "head"}, {"conv2", "fc1", "head"}]
    assert "conv2" not in changed(rec.states[1], rec.states[2]) and "conv2" in changed(rec.states[2], rec.states[3])


RESUME = ["data.train_size=256", "logger=none", "test=false", "scheduler=step", "scheduler.scheduler.step_size=1"]


# Scheduled (fc1 at epoch 1) and plateau-driven unfreezing (min_delta 1.0: every validation
# after the first is a plateau, so conv2 unfreezes at epoch 2), with Adam and StepLR state.
RESUMED_STRATEGY = [
    "finetune=unfreeze_on_plateau",
    "finetune.frozen=[conv1,conv2,fc1]",
    "finetune.unfreeze={1: [fc1]}",
    "finetune.on_plateau.patience=1",
    "finetune.on_plateau.min_delta=1.0",
    "optimizer=adam",
    "optimizer.lr=0.003",
]


@pytest.mark.slow
def test_resume_mid_schedule_equals_uninterrupted_run(tmp_path):
    strategy = RESUMED_STRATEGY
    whole = compose_config([*TINY, *RESUME, *strategy, "trainer.max_epochs=3"], tmp_path / "whole")
    train(whole)
    first = compose_config([*TINY, *RESUME, *strategy, "trainer.max_epochs=2"], tmp_path / "split")
    train(first)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    halfway = torch.load(last, weights_only=True)
    resumed = compose_config(
        [*TINY, *RESUME, *strategy, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "resumed"
    )
    train(resumed)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) and a["global_step"] == 12
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["finetune"] == b["finetune"] and b["finetune"]["plateau_events"][2] == "conv2"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["optimizer_states"][0]["param_groups"] == b["optimizer_states"][0]["param_groups"]
    # conv2 unfroze in the resumed epoch (2) and trained there; it had not before.
    assert not torch.equal(halfway["state_dict"]["net.conv2.0.weight"], b["state_dict"]["net.conv2.0.weight"])


def test_head_is_reinitialised_for_another_number_of_classes(tmp_path, caplog):
    torch.manual_seed(0)
    source = CNN(num_classes=10)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "a.ckpt")
    torch.manual_seed(1)
    target = CNN(num_classes=26)
    fresh_head = target.head.weight.clone()
    with caplog.at_level(logging.WARNING, logger="mnist_lab.finetune"):
        replaced = load_pretrained(target, tmp_path / "a.ckpt")
    assert replaced == ["head.weight", "head.bias"]
    assert "head is re-initialised" in caplog.text and "(26, 128)" in caplog.text
    assert torch.equal(target.head.weight, fresh_head)
    for g in ("conv1", "conv2", "fc1"):
        for (k, v), w in zip(getattr(source, g).state_dict().items(), getattr(target, g).state_dict().values()):
            assert torch.equal(v, w), k


def test_mismatched_checkpoint_lists_names_and_shapes(tmp_path):
    torch.save(CNN(batch_norm=True, hidden=64).state_dict(), tmp_path / "bn.pt")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(CNN(), tmp_path / "bn.pt")
    msg = str(e.value)
    assert "fc1.1.weight: checkpoint (64, 3136), model (128, 3136)" in msg
    assert "conv1.0.bias: missing from the checkpoint (model (32,))" in msg
    assert "conv1.1.running_mean: in the checkpoint (32,), not in the model" in msg
    for bad, phrase in ((tmp_path / "nope.pt", "does not exist"), (tmp_path / "junk.pt", "cannot be read")):
        if bad.name == "junk.pt":
            bad.write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointError, match=phrase):
            load_pretrained(CNN(), bad)


def test_bad_checkpoint_fails_before_training(tiny_cfg, tmp_path):
    torch.save(MLP().state_dict(), tmp_path / "mlp.pt")
    cfg = tiny_cfg("finetune=freeze_conv", f"finetune.checkpoint={tmp_path / 'mlp.pt'}")
    with pytest.raises(CheckpointError, match="does not fit CNN"):
        train(cfg)
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()


def test_unknown_group_fails_with_the_models_groups(tiny_cfg):
    cfg = tiny_cfg("finetune=freeze_conv", "model=mlp")
    with pytest.raises(ConfigError, match=r"\['conv1', 'conv2'\].*MLP has the groups \['fc1', 'fc2', 'head'\]"):
        train(cfg)
    with pytest.raises(ConfigError, match="only the groups in finetune.frozen"):
        FineTune(frozen=["conv1"], unfreeze={2: ["fc1"]}).bind(CNN())
    with pytest.raises(ConfigError, match="epochs >= 1"):
        FineTune(frozen=["conv1"], unfreeze={0: ["conv1"]})
    with pytest.raises(ConfigError, match=r"monitor=val/f1.*\['val/acc', 'val/loss'\]"):
        FineTune(frozen=["conv1"], on_plateau={"monitor": "val/f1"})


@pytest.mark.slow
def test_pretrain_export_then_finetune_on_uci_digits(tmp_path, monkeypatch):
    """docs/fine-tuning.md's two commands at toy size: pretrain (twice), then freeze_conv from a pretraining's run directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # every file goes under the run directories: nothing here
    pretrain = [
        *TINY,
        "experiment=pretrain_mnist",
        "data.train_size=256",
        "trainer.max_epochs=1",
        "data.batch_size=64",
        "scheduler=none",  # one-cycle cannot split 4 steps into its phases
        "~data/augment",
        "logger=none",
        "test=false",
    ]
    first, second = tmp_path / "pretrain", tmp_path / "pretrain2"
    train(compose_config(pretrain, first))
    train(compose_config(pretrain, second))  # a second pretraining needs no override
    weights = first / EXPORTED
    exported = torch.load(weights, weights_only=True)
    card = read_card(weights)
    assert card["checkpoint"].startswith(str(first / "checkpoints")) and card["model"]["_target_"].endswith("CNN")
    assert (second / EXPORTED).is_file() and list(cwd.iterdir()) == []
    net, _ = load_net(weights)  # the card rebuilds the network: the file alone is a model
    assert torch.equal(net.head.weight, exported["head.weight"])
    with pytest.raises(ConfigError, match="refusing to replace it"):  # an explicit path keeps its weights
        train(compose_config([*pretrain, f"callbacks.export_weights.path={weights}"], tmp_path / "pretrain3"))
    assert torch.equal(torch.load(weights, weights_only=True)["head.weight"], exported["head.weight"])

    finetune = compose_config(
        [
            *TINY,
            "data=uci_digits",
            "data.train_size=null",
            "data.labels_per_class=10",
            "finetune=freeze_conv",
            f"finetune.checkpoint={first}",  # the run directory: its exported weights
            "logger=none",
            "callbacks.test_report=null",
        ],
        tmp_path / "finetune",
    )
    metrics = train(finetune)
    tuned = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    for k in ("conv1.0.weight", "conv2.0.bias"):
        assert torch.equal(tuned[f"net.{k}"], exported[k])  # frozen: exactly the pretrained weights
    assert not torch.equal(tuned["net.head.weight"], exported["head.weight"])
    assert 0 <= metrics["test/acc"] <= 1
    assert list(cwd.iterdir()) == []


def test_a_run_directory_as_finetune_checkpoint(tmp_path):
    """A run directory gives its exported weights, else its best checkpoint; one without either is a clear error."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"finetune.checkpoint=.* is a directory without checkpoints/best"):
        find_weights(run)
    best = run / "checkpoints" / "best-epoch000-acc0.5000.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in CNN().state_dict().items()}}, best)
    assert find_weights(run) == best
    (run / EXPORTED).parent.mkdir()
    torch.save(CNN().state_dict(), run / EXPORTED)
    assert find_weights(run) == run / EXPORTED
    assert build_run(compose_config(["finetune=freeze_conv", f"finetune.checkpoint={run}"])).finetune.checkpoint == str(
        run / EXPORTED
    )


def test_transfer_table_from_job_directories(tmp_path, capsys):
    from omegaconf import OmegaConf

    from mnist_lab.tools.finetune_table import main

    def job(n, strategy, checkpoint, labels, seed, acc):
        d = tmp_path / "sweep" / str(n)
        (d / ".hydra").mkdir(parents=True)
        OmegaConf.save(
            {"seed": seed, "data": {"labels_per_class": labels}, "finetune": {"checkpoint": checkpoint}},
            d / ".hydra" / "config.yaml",
        )
        OmegaConf.save({"hydra": {"runtime": {"choices": {"finetune": strategy}}}}, d / ".hydra" / "hydra.yaml")
        if acc is not None:
            (d / "metrics.json").write_text(json.dumps({"test/acc": acc, "train_seconds": 10.0}))

    job(0, "freeze_conv", "w.pt", 10, 0, 0.90)
    job(1, "freeze_conv", "w.pt", 10, 1, 0.92)
    job(2, "none", None, 10, 0, 0.50)
    job(3, "none", None, None, 0, 0.97)
    job(4, "full", "w.pt", 10, 0, None)  # failed: no metrics.json
    assert main([str(tmp_path / "sweep"), "--figure", str(tmp_path / "study.png")]) == 1  # a job did not finish
    out = capsys.readouterr().out
    # mean ± sample std of 90 and 92; the best mean of each column in bold
    assert "| freeze_conv | **91.0 ± 1.4** (10.0) n=2 | - |" in out
    assert "| scratch | 50.0 ± 0.0 (10.0) n=1 | **97.0 ± 0.0** (10.0) n=1 |" in out  # no checkpoint: scratch
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "sweep/4: full, labels_per_class=10: no metrics.json" in out
