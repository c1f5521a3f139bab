"""`python -m mnist_lab evaluate ckpt_path=PATH [data=NAME]`: score a trained model on a test split.

The network is rebuilt from the checkpoint and the config of the run that trained it; the
data are the run's own unless `data=...` names another dataset. Reports accuracy, loss,
per-class precision and recall, the confusion matrix and the most confidently wrong digits
to the terminal, metrics.json, PNG figures and TensorBoard, in its own output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_precision,
    multiclass_recall,
)

from mnist_lab import CONF_DIR
from mnist_lab.errors import ConfigError, user_errors


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint of cfg.ckpt_path on cfg.split; print, write and return the metrics."""
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table
    from torch.utils.tensorboard import SummaryWriter

    from mnist_lab.callbacks.test_report import confusion_figure, misclassified_figure
    from mnist_lab.checkpoints import load_net
    from mnist_lab.files import write_json
    from mnist_lab.inference.predictor import probabilities, tta_angles
    from mnist_lab.weights import find_checkpoint

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split}: choose test or val.")
    tta = tta_angles(cfg.get("tta_degrees"))
    ckpt = find_checkpoint(cfg.ckpt_path)
    net, run_cfg = load_net(ckpt)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device)
    # ensemble=[...]: more checkpoints whose softmax outputs are averaged with ckpt_path's.
    members = [net] + [load_net(find_checkpoint(path))[0].to(device) for path in cfg.get("ensemble") or []]

    # 1. The data: the run's own, or the dataset named by data=... on the command line.
    datamodule = instantiate(cfg.data if cfg.get("data") is not None else run_cfg.data)
    datamodule.setup("test")
    x = getattr(datamodule.splits, f"{cfg.split}_x")
    y = getattr(datamodule.splits, f"{cfg.split}_y")
    member_probs = [
        probabilities(m, x, datamodule.mean, datamodule.std, datamodule.eval_batch_size, device, tta) for m in members
    ]
    classes = member_probs[0].shape[1]
    if int(y.max()) >= classes:
        raise ConfigError(
            f"The {cfg.split} labels of data go up to {int(y.max())} but the model of {ckpt} has {classes} "
            "classes: evaluate it on a dataset with the labels it was trained on."
        )

    # 2. The ensemble's prediction: the members' averaged softmax.
    probs = torch.stack(member_probs).mean(0)
    logits = probs.clamp_min(1e-12).log()  # log of the averaged softmax: cross-entropy stays exact
    preds = probs.argmax(1)

    # 3. Metrics: accuracy, loss, per-class precision, recall and the confusion matrix.
    confusion, precision, recall = class_scores(preds, y, classes)
    hits = confusion.diag().float()
    wrong = (preds != y).nonzero().flatten()
    wrong = wrong[probs[wrong, preds[wrong]].argsort(descending=True)][: cfg.num_wrong]
    s = cfg.split
    metrics: dict[str, Any] = {
        f"{s}/acc": hits.sum().item() / len(y),
        f"{s}/loss": F.cross_entropy(logits, y).item(),
        f"{s}/precision": precision.tolist(),
        f"{s}/recall": recall.tolist(),
        f"{s}/support": confusion.sum(1).tolist(),
        f"{s}/confusion_matrix": confusion.tolist(),
        f"{s}/most_confident_wrong": [
            {"index": int(i), "true": int(y[i]), "pred": int(preds[i]), "confidence": probs[i, preds[i]].item()}
            for i in wrong
        ],
        "num_examples": len(y),
        "checkpoint": str(ckpt),
        "ensemble": [str(find_checkpoint(path)) for path in cfg.get("ensemble") or []],
        "tta_degrees": list(tta),
        f"{s}/acc_members": [(m.argmax(1) == y).float().mean().item() for m in member_probs],
    }
    # How much an ensemble can gain: averaging rarely rights an image that every member gets
    # wrong, so wrong_in_every_member bounds its errors from below (in practice).
    member_wrong = torch.stack([m.argmax(1) != y for m in member_probs])  # (members, N)
    metrics[f"{s}/wrong_in_every_member"] = int(member_wrong.all(0).sum())
    metrics[f"{s}/wrong_in_some_member"] = int(member_wrong.any(0).sum())

    # 4. Report: terminal, metrics.json, PNG figures, TensorBoard.
    console = Console()
    views = f", each also read rotated by {', '.join(f'{a:g}' for a in tta)} degrees" if tta else ""
    console.print(f"{ckpt}: {s} split, {len(y)} images{views}")
    table = Table()
    for column in ("class", "precision", "recall", "support"):
        table.add_column(column, justify="right")
    for k in range(classes):
        table.add_row(str(k), f"{precision[k]:.4f}", f"{recall[k]:.4f}", str(int(confusion[k].sum())))
    console.print(table)
    console.print(f"{s}/acc {metrics[f'{s}/acc']:.4f}   {s}/loss {metrics[f'{s}/loss']:.4f}")
    if len(members) > 1:
        console.print(
            f"{len(members)} members: {metrics[f'{s}/wrong_in_every_member']} images wrong in every member, "
            f"{metrics[f'{s}/wrong_in_some_member']} in at least one; the ensemble gets {int((preds != y).sum())} wrong"
        )
    console.print(
        "most confidently wrong (index: true -> predicted, confidence): "
        + ", ".join(
            f"{w['index']}: {w['true']}->{w['pred']} {w['confidence']:.3f}"
            for w in metrics[f"{s}/most_confident_wrong"][:10]
        )
    )
    output_dir = Path(cfg.paths.output_dir)
    write_json(output_dir / "metrics.json", metrics)
    figures = {f"{s}/confusion_matrix": confusion_figure(confusion)}
    if len(wrong):
        figures[f"{s}/most_confident_wrong"] = misclassified_figure(
            [(x[i, 0], int(y[i]), int(preds[i])) for i in wrong]
        )
    (output_dir / "figures").mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(output_dir / "tensorboard"))
    for key in (f"{s}/acc", f"{s}/loss"):
        writer.add_scalar(key, metrics[key], 0)
    for tag, fig in figures.items():
        fig.savefig(output_dir / "figures" / f"{tag.split('/')[1]}.png", dpi=100)
        writer.add_figure(tag, fig, close=False)
        plt.close(fig)
    writer.close()
    console.print(f"metrics.json, figures/ and tensorboard/ in {output_dir}")
    return metrics


def class_scores(
    preds: torch.Tensor, target: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The confusion matrix (rows true, columns predicted), per-class precision and per-class recall.

    A class that is never predicted has precision 0; one absent from `target` has recall 0.
    """
    confusion = multiclass_confusion_matrix(preds, target, classes)
    precision = multiclass_precision(preds, target, classes, average=None, zero_division=0)
    recall = multiclass_recall(preds, target, classes, average=None, zero_division=0)
    return confusion, precision, recall


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
