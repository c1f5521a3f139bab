"""Semi-supervised fine-tuning (FixMatch): unlabelled images as data, the loss, logging, resume, config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mnist_lab.config import validate
from mnist_lab.data.datamodule import DigitsDataModule, UnlabelledBatches
from mnist_lab.errors import ConfigError
from mnist_lab.models import CNN
from mnist_lab.semisupervised import FixMatch, SemiSupervisedClassifier
from mnist_lab.train import train
from tests.conftest import compose_config

# semeion (bundled, offline): 1,147 training images. 2 labels per class: 20 labelled (3 batches
# of 8, the last one of 4) and 1,127 unlabelled, 16 per step (ratio 2); 8 Adam steps.
SMALL = [
    "finetune=fixmatch",
    "data=semeion",
    "data.labels_per_class=2",
    "data.batch_size=8",
    "data.eval_batch_size=512",
    "finetune.ratio=2",
    "finetune.threshold=0.8",  # pseudo-labels are taken from the first step (the bundled CNN: 84% on semeion)
    "optimizer=adam",
    "optimizer.lr=0.001",
    "+trainer.max_steps=8",
    "trainer.max_epochs=100",
    "trainer.accelerator=cpu",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "logger=none",
]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_labels_per_class_keeps_the_rest_as_unlabelled():
    cfg = compose_config(["data=semeion", "data.labels_per_class=3"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.unlabelled is not None
    assert len(dm.splits.train_y) == 30 and len(dm.unlabelled[1]) == 1147 - 30
    # Together they are the training split, each image once.
    cfg0 = compose_config(["data=semeion", "data.labels_per_class=0"])
    dm0 = instantiate(cfg0.data)
    dm0.setup("fit")
    assert len(dm0.splits.train_y) == 0 and len(dm0.unlabelled[1]) == 1147
    both = torch.cat([dm.splits.train_x, dm.unlabelled[0]]).flatten(1)
    assert torch.equal(both.sum(0), dm0.unlabelled[0].flatten(1).sum(0))


def test_unlabelled_stream_is_a_function_of_seed_and_position():
    x, y = torch.arange(10).view(10, 1, 1, 1), torch.arange(10)
    a = UnlabelledBatches(x, y, batch_size=4, per_epoch=3, seed=0)
    first, second = [b[1] for b in a], [b[1] for b in a]
    # 24 positions: two full shuffled orders and 4 of a third, each order a permutation.
    flat = torch.cat(first + second)
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))
    b = UnlabelledBatches(x, y, batch_size=4, per_epoch=3, seed=0)
    b.load_state_dict({"position": 4})  # mid-epoch: the rest of the second epoch only
    assert [t.tolist() for _, t in b] == [t.tolist() for t in second[1:]]


def test_unlabelled_loss_is_masked_by_the_threshold():
    cfg = compose_config(["finetune=fixmatch", "data=semeion"])
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    fm = instantiate(cfg.finetune, checkpoint=None, align=False)  # pseudo-labels: the plain argmax
    module = SemiSupervisedClassifier(net, instantiate(cfg.optimizer), finetune=fm)
    module.log = lambda *a, **k: None  # no trainer to log to

    class Trainer:  # what training_step reads of the trainer: no train/loss log in these steps
        log_every_n_steps, global_step = 1000, 0

    module._trainer = Trainer()  # type: ignore[assignment]
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    u = {"weak": torch.randn(6, 1, 28, 28), "strong": torch.randn(6, 1, 28, 28), "hidden": torch.arange(6)}
    labelled = F.cross_entropy(net(x), y)
    fm.threshold = 1.0  # nothing is that confident: the labelled loss alone
    assert torch.allclose(module.training_step({"labelled": (x, y), "unlabelled": u}, 0), labelled)
    fm.threshold, fm.weight = 1e-6, 2.0  # every prediction is taken
    with torch.no_grad():
        pseudo = net(u["weak"]).argmax(1)
    expected = labelled + 2.0 * F.cross_entropy(net(u["strong"]), pseudo)
    assert torch.allclose(module.training_step({"labelled": (x, y), "unlabelled": u}, 0), expected)
    assert torch.allclose(module.training_step({"unlabelled": u}, 0), expected - labelled)  # no labels at all


def test_hidden_labels_never_reach_the_loss(tmp_path, monkeypatch):
    """Scrambling the unlabelled images' labels gives the same run, bit for bit."""
    train(compose_config(SMALL, tmp_path / "a"))
    setup = DigitsDataModule.setup

    def scrambled(self, stage=None):
        setup(self, stage)
        x, y = self.unlabelled
        shift = torch.randint(9, y.shape, generator=torch.Generator().manual_seed(1))  # not the run's RNG
        self.unlabelled = x, (y + 1 + shift) % 10  # every label wrong

    monkeypatch.setattr(DigitsDataModule, "setup", scrambled)
    train(compose_config(SMALL, tmp_path / "b"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and the run did learn from the unlabelled images: without them (weight 0) it differs.
    train(compose_config([*SMALL, "finetune.weight=0.0"], tmp_path / "c"))
    c = weights(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_zero_labels_logs_the_unlabelled_loss_and_pseudo_labels(tmp_path):
    run = tmp_path / "run"
    metrics = train(compose_config([*SMALL, "data.labels_per_class=0", "logger=csv"], run))
    assert metrics["global_steps"] == 8
    (log,) = run.rglob("metrics.csv")
    rows = list(csv.DictReader(log.open()))
    seen = {k for r in rows for k, v in r.items() if v}
    assert {"train/unlabelled_loss", "train/pseudo_label_share", "train/pseudo_label_acc"} <= seen
    share = [float(r["train/pseudo_label_share"]) for r in rows if r.get("train/pseudo_label_share")]
    acc = [float(r["train/pseudo_label_acc"]) for r in rows if r.get("train/pseudo_label_acc")]
    # The bundled CNN reads 84% of semeion: at threshold 0.8 it takes most images, mostly rightly.
    assert all(0.3 < s <= 1 for s in share) and all(0.7 < a <= 1 for a in acc)


@pytest.mark.slow
def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path):
    # 3 labelled batches per epoch, a checkpoint every 2 steps: a crash after step 5 leaves the
    # checkpoint of step 4, mid-way through the second epoch. Gradual unfreezing from epoch 1:
    # the schedule's state crosses the resume too.
    run = [
        *SMALL,
        "finetune.frozen=[conv1,conv2]",
        "finetune.unfreeze={1: [conv2], 2: [conv1]}",
        "checkpoint_every_n_steps=2",
        "test=false",
    ]
    train(compose_config(run, tmp_path / "whole"))
    crashed = tmp_path / "crashed"
    crash = ["+callbacks.crash._target_=tests.test_reliability.Crash", "+callbacks.crash.at_step=5"]
    with pytest.raises(RuntimeError, match="crash at step 5"):
        train(compose_config([*run, *crash], crashed))
    halfway = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert halfway["global_step"] == 4
    assert halfway["DigitsDataModule"] == {
        "train_batches": {"epoch": 1, "served": 1},
        "unlabelled_batches": {"position": 4},
    }
    train(compose_config([*run, f"ckpt_path={crashed}/checkpoints/last.ckpt"], crashed))
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) and a["global_step"] == 8
    for k, v in a["state_dict"].items():  # the network and the class prior of the alignment
        assert torch.equal(v, b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["finetune=freeze_conv", "data.labels_per_class=0"],
            r"`data.labels_per_class` = 0 leaves no labelled image.*finetune=fixmatch",
        ),
        (
            ["finetune=fixmatch", "data.labels_per_class=10", "finetune.threshold=1.5"],
            r"`finetune.threshold` = 1.5 is out of range",
        ),
        (
            ["finetune=fixmatch", "data.labels_per_class=10", "finetune.ratio=0"],
            r"`finetune.ratio` = 0 is out of range.*>= 1",
        ),
        (
            ["finetune=fixmatch", "data.labels_per_class=10", "finetune.weight=-1"],
            r"`finetune.weight` = -1 is out of range",
        ),
        (["finetune=fixmatch", "data.labels_per_class=10", "+finetune.thresold=0.9"], r"Did you mean `threshold`"),
        (
            ["finetune=fixmatch", "data.labels_per_class=10", "trainer=ddp_cpu"],
            r"`trainer.devices` = 2 asks for several processes \(DDP\)",
        ),
    ],
)
def test_bad_settings_fail_fast(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(["data=semeion", *overrides]))


def test_every_label_kept_leaves_nothing_to_learn_from(tmp_path):
    cfg = compose_config([*SMALL, "data.labels_per_class=null"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.labels_per_class=None leaves no unlabelled training images"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def test_strategy_keeps_the_supervised_mechanism():
    """fixmatch is discriminative_lr plus three keys: the same groups and learning rates."""
    fm = instantiate(compose_config(["finetune=fixmatch"]).finetune)
    sup = instantiate(compose_config(["finetune=discriminative_lr"]).finetune)
    assert isinstance(fm, FixMatch) and (fm.threshold, fm.ratio, fm.weight) == (0.95, 7, 1.0)
    fm.bind(CNN())
    sup.bind(CNN())
    groups = ("conv1", "conv2", "fc1", "head")
    assert [fm.lr_multiplier(g) for g in groups] == [sup.lr_multiplier(g) for g in groups] == [0.125, 0.25, 0.5, 1.0]


def test_transfer_table_reports_the_gap_closed():
    from mnist_lab.tools.finetune_table import ZERO_SHOT, semi_supervised_report

    def rows(strategy: str, labels, accs, semi=False):
        return [{"target": "t", "strategy": strategy, "labels": labels, "acc": a, "semi": semi} for a in accs]

    table = [
        *rows("freeze_conv", 10, [0.94, 0.95, 0.96]),  # 95.0 ± 1.0
        *rows("freeze_conv", "all", [0.97, 0.97, 0.97]),
        *rows("full", "all", [0.99, 0.99, 0.99]),  # the all-labels ceiling: 99.0, a gap of 4.0
        *rows("fixmatch", 10, [0.97, 0.97, 0.97], semi=True),
        *rows("fixmatch", 0, [0.90, 0.90, 0.90], semi=True),
        *rows(ZERO_SHOT, 0, [0.85]),
    ]
    report = semi_supervised_report(table)
    assert "t, fixmatch, 0 labels/class: 90.0 ± 0.0; zero-shot 85.0 (+5.0)" in report
    assert "t, fixmatch, 10 labels/class: 97.0 ± 0.0; best supervised freeze_conv 95.0, all labels 99.0" in report
    assert "closes 50% of the gap; trails by more than their spread: none" in report
    worse = semi_supervised_report([r if r["strategy"] != "fixmatch" else {**r, "acc": 0.93} for r in table])
    assert "closes -50% of the gap; trails by more than their spread: freeze_conv 95.0 ± 1.0" in worse


def test_transfer_table_record_names_commits_and_machines(tmp_path):
    from mnist_lab.tools.finetune_table import record

    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    env = {"git_commit": "abc", "cpu": "AMD EPYC", "cpu_family": 25, "cpu_model_number": 17, "torch": "2.x"}
    (job / "environment.json").write_text(json.dumps(env))
    row = {"target": "t", "strategy": "fixmatch", "labels": 0, "seed": 0, "acc": 0.9, "seconds": 1.0, "job": job}
    out = record([row], [tmp_path / "sweep"], ["sweep", "--zero-shot"])
    assert out["command"] == "mnist-lab finetune_table sweep --zero-shot"
    assert out["sweeps"][str(tmp_path / "sweep")]["machines"] == ["AMD EPYC, family 25 model 17"]
    assert out["sweeps"][str(tmp_path / "sweep")]["git_commits"] == ["abc"]
    assert out["rows"] == [{k: v for k, v in row.items() if k != "job"}]
    json.dumps(out)  # plain JSON
