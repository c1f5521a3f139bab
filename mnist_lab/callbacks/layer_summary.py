"""The model summary printed when fit starts: the network's parameters per layer group."""

from __future__ import annotations

import pytorch_lightning as pl
import rich
import rich.table
from pytorch_lightning.callbacks import ModelSummary


class LayerSummary(ModelSummary):
    """Prints the network's parameters per layer group (`group_names`: conv1, conv2, fc1, head) when fit starts.

    Replaces Lightning's default summary, whose FLOPs column is all zeros here (Lightning counts
    FLOPs only for a LightningModule with an `example_input_array`) and whose other rows are the
    Classifier's metric objects. A ModelSummary subclass, so that Lightning adds no default one;
    `callbacks.model_summary=null` brings that back.
    """

    def __init__(self) -> None:
        super().__init__()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = getattr(pl_module, "net", pl_module)
        names = getattr(net, "group_names", None) or [name for name, _ in net.named_children()]
        table = rich.table.Table(title=f"{type(net).__name__}: parameters per layer group", title_justify="left")
        table.add_column("group")
        table.add_column("layers with weights")
        table.add_column("parameters", justify="right")
        for name in names:
            group = getattr(net, name)
            layers = [type(m).__name__ for m in group.modules() if any(True for _ in m.parameters(recurse=False))]
            table.add_row(name, ", ".join(layers), f"{sum(p.numel() for p in group.parameters()):,}")
        params = list(net.parameters())
        size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
        table.add_section()
        table.add_row("total", f"{size_mb:.2f} MB of weights", f"{sum(p.numel() for p in params):,}")
        rich.print(table)
