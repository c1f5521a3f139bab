"""Fine-tuning: start from pretrained weights and decide which layer groups train when.

A strategy (conf/finetune/*.yaml) is data: which of the model's layer groups (`group_names`,
e.g. conv1, conv2, fc1, head) are frozen at the start, at which epoch each one unfreezes
(or on a validation plateau), and each group's learning-rate multiplier. `FineTune` applies
it with one mechanism that avoids what breaks elsewhere:

- The optimizer gets one param group per layer group from the start, frozen ones included,
  each at its final learning rate. Freezing is `requires_grad=False`: the gradient stays
  None, so SGD/Adam/AdamW skip the parameter entirely (no momentum or weight-decay drift:
  frozen weights stay bit-for-bit equal). Unfreezing only flips `requires_grad`, so the
  number of param groups never changes: LR schedulers keep their per-group state and a
  checkpoint's optimizer state always loads.
- Batch-norm layers of frozen groups run in eval mode (their running statistics stay
  fixed) unless `train_frozen_bn` is set; re-applied at every training epoch start.
- The frozen set is a function of (strategy, epoch, recorded plateau events); the events
  and the plateau tracker are saved in the Lightning checkpoint, so a resumed run continues
  with the same state as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mnist_lab.errors import ConfigError

log = logging.getLogger(__name__)

# Param group of the parameters that belong to no named layer group (models without
# group_names, or extra parameters outside the groups): always trained, multiplier 1.
OTHER = "other"
# The validation metrics the Classifier hands to FineTune.observe().
MONITORS = ("val/acc", "val/loss")


class FineTune:
    """A fine-tuning strategy: pretrained weights, frozen groups, unfreeze schedule, group LRs.

    Args:
        checkpoint: a Lightning checkpoint or a plain state_dict file to start from; a run
            directory (its exported weights, else its best checkpoint); `bundled`: the
            repository's MNIST-pretrained weights of this model (mnist_lab/pretrained.py);
            or null (initial weights).
        lr_scale: multiplies every group's learning rate (e.g. 0.1 to fine-tune gently).
        frozen: layer groups frozen at the start.
        unfreeze: {epoch: [groups]}: frozen groups that start training at that epoch (0-based).
        group_lr: {group: multiplier} of the learning rate; groups not named get 1.
        layer_decay: multiplier layer_decay**k for the group k places below the head
            (discriminative learning rates); exclusive with group_lr.
        on_plateau: unfreeze the next frozen group when the monitored validation metric has
            not improved for `patience` validations: {monitor: val/acc, mode: max,
            patience: 2, min_delta: 0.0, order: [groups]}; order defaults to the frozen groups
            from the head down. null disables it.
        train_frozen_bn: batch-norm layers of frozen groups keep updating their running
            statistics (false: they run in eval mode and stay fixed).
        unfrozen_lr_scale: extra learning-rate multiplier of groups that start frozen and
            unfreeze later.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        lr_scale: float = 1.0,
        frozen: Sequence[str] = (),
        unfreeze: Mapping[int, Sequence[str]] | None = None,
        group_lr: Mapping[str, float] | None = None,
        layer_decay: float | None = None,
        on_plateau: Mapping[str, Any] | None = None,
        train_frozen_bn: bool = False,
        unfrozen_lr_scale: float = 1.0,
    ) -> None:
        if lr_scale <= 0 or unfrozen_lr_scale <= 0 or (layer_decay is not None and layer_decay <= 0):
            raise ConfigError(
                f"finetune.lr_scale={lr_scale}, unfrozen_lr_scale={unfrozen_lr_scale}, layer_decay={layer_decay}: "
                "learning-rate multipliers must be > 0."
            )
        if group_lr and layer_decay is not None:
            raise ConfigError(
                "finetune sets both group_lr and layer_decay: they are two ways to give each group its learning "
                "rate; keep one (set the other to null)."
            )
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        self.lr_scale, self.unfrozen_lr_scale = float(lr_scale), float(unfrozen_lr_scale)
        self.frozen = list(frozen or ())
        self.unfreeze = {int(e): list(gs) for e, gs in (unfreeze or {}).items()}
        bad_epochs = [e for e in self.unfreeze if e < 1]
        if bad_epochs:
            raise ConfigError(
                f"finetune.unfreeze has epoch {bad_epochs[0]}: epochs count from 0 and a group that trains from "
                "epoch 0 is simply not frozen; use epochs >= 1 or drop the group from finetune.frozen."
            )
        self.group_lr = dict(group_lr or {})
        self.layer_decay = layer_decay
        self.on_plateau = _plateau_options(on_plateau)
        self.train_frozen_bn = train_frozen_bn
        # Filled by bind() and the plateau tracker; saved in checkpoints by state_dict().
        self.group_names: tuple[str, ...] = ()
        self.plateau_events: dict[int, str] = {}  # epoch from which the group trains -> group
        self.best: float | None = None
        self.bad_rounds = 0
        self._applied: frozenset[str] | None = None
        self._bound: nn.Module | None = None
        # Several processes (DDP): DistributedDataParallel registers the parameters that
        # require grad when it wraps the model and never syncs ones that start requiring it
        # later. There every parameter keeps requires_grad and frozen groups instead lose
        # their (synchronised) gradients before each optimizer step: drop_frozen_grads().
        self.distributed = False

    # ----- checking the strategy against the model --------------------------------------
    def bind(self, net: nn.Module) -> None:
        """Check every group the strategy names against `net.group_names` (ConfigError if unknown).

        Binding the same network again does nothing.
        """
        if self._bound is net:
            return
        self.group_names = tuple(getattr(net, "group_names", ()))
        named = {
            "frozen": self.frozen,
            "unfreeze": [g for gs in self.unfreeze.values() for g in gs],
            "group_lr": list(self.group_lr),
            "on_plateau.order": list(self.on_plateau["order"] or ()) if self.on_plateau else [],
        }
        for key, groups in named.items():
            unknown = [g for g in groups if g not in self.group_names]
            if unknown:
                raise ConfigError(
                    f"finetune.{key} names the layer group(s) {unknown}, but {type(net).__name__} has the groups "
                    f"{list(self.group_names) or '(none: it declares no group_names)'}. Use those names "
                    "(models declare them in mnist_lab/models.py)."
                )
        not_frozen = [g for g in named["unfreeze"] + named["on_plateau.order"] if g not in self.frozen]
        if not_frozen:
            raise ConfigError(
                f"finetune unfreezes {not_frozen} (unfreeze / on_plateau.order), but only the groups in "
                f"finetune.frozen ({self.frozen}) start frozen. Add them to finetune.frozen or remove them."
            )
        if self.on_plateau and self.on_plateau["order"] is None:  # head first, like ULMFiT
            self.on_plateau["order"] = [g for g in reversed(self.group_names) if g in self.frozen]
        self._bound = net

    def lr_multiplier(self, group: str) -> float:
        """The factor between the optimizer's configured lr and this group's lr."""
        m = self.lr_scale
        if group in self.group_lr:
            m *= self.group_lr[group]
        elif self.layer_decay is not None and group in self.group_names:
            depth = len(self.group_names) - 1 - self.group_names.index(group)  # head: 0
            m *= self.layer_decay**depth
        if group in self.frozen:
            m *= self.unfrozen_lr_scale
        return m

    # ----- the optimizer ----------------------------------------------------------------
    def param_groups(self, net: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """One optimizer param group per layer group (named, at its final lr), frozen ones included.

        A strategy that freezes nothing and gives every group the same lr (`none`, `full`) gets
        one param group: exactly the optimizer a run without fine-tuning builds.
        """
        if not self.frozen and len({self.lr_multiplier(g) for g in self.group_names}) <= 1:
            return [{"params": list(net.parameters()), "lr": base_lr * self.lr_scale}]
        groups, seen = [], set()
        for name in self.group_names:
            params = list(getattr(net, name).parameters())
            seen |= {id(p) for p in params}
            groups.append({"params": params, "name": name, "lr": base_lr * self.lr_multiplier(name)})
        rest = [p for p in net.parameters() if id(p) not in seen]
        if rest:
            groups.append({"params": rest, "name": OTHER, "lr": base_lr * self.lr_scale})
        return [g for g in groups if g["params"]]

    def scheduler_kwargs(self, scheduler_factory: Callable[..., Any], optimizer: torch.optim.Optimizer) -> dict:
        """Per-group values for schedulers that take absolute learning rates (OneCycleLR's max_lr).

        Most schedulers scale each group's own initial lr, so the multipliers survive them.
        OneCycleLR and CyclicLR instead set every group to one configured max_lr/base_lr; a
        list of per-group values keeps the multipliers.
        """
        keywords = getattr(scheduler_factory, "keywords", {})
        base = optimizer.defaults["lr"]
        out = {}
        for key in ("max_lr", "base_lr"):
            if isinstance(keywords.get(key), (int, float)):
                out[key] = [keywords[key] * g["lr"] / base for g in optimizer.param_groups]
        return out

    # ----- the schedule -----------------------------------------------------------------
    def frozen_at(self, epoch: int) -> frozenset[str]:
        """The groups frozen during `epoch`: a function of the config and the plateau events."""
        thawed = {g for e, gs in self.unfreeze.items() if e <= epoch for g in gs}
        thawed |= {g for e, g in self.plateau_events.items() if e <= epoch}
        return frozenset(g for g in self.frozen if g not in thawed)

    def apply(self, net: nn.Module, epoch: int) -> frozenset[str]:
        """Set requires_grad and batch-norm modes for `epoch`; log groups that unfreeze."""
        frozen = self.frozen_at(epoch)
        if self._applied is not None and frozen != self._applied:
            thawed = sorted(self._applied - frozen, key=self.group_names.index)
            log.info(
                "Fine-tune, epoch %d: unfreezing %s (lr x%s)", epoch, thawed, [self.lr_multiplier(g) for g in thawed]
            )
        for name in self.group_names:
            module = getattr(net, name)
            for p in module.parameters():
                p.requires_grad_(self.distributed or name not in frozen)
            # Frozen: eval mode (fixed statistics). Unfrozen: back to the network's mode, since
            # Lightning does not call train() again after an epoch left them in eval mode.
            bn_training = net.training and (name not in frozen or self.train_frozen_bn)
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(bn_training)
        self._applied = frozen
        return frozen

    def drop_frozen_grads(self, net: nn.Module) -> None:
        """Set the gradients of frozen groups to None, so the optimizer skips them (distributed mode)."""
        for name in self._applied or ():
            for p in getattr(net, name).parameters():
                p.grad = None

    def observe(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Feed one validation result to the plateau rule; may schedule the next unfreeze."""
        if not self.on_plateau:
            return
        opts = self.on_plateau
        value = float(metrics[opts["monitor"]])
        sign = 1.0 if opts["mode"] == "max" else -1.0
        if self.best is None or sign * (value - self.best) > opts["min_delta"]:
            self.best, self.bad_rounds = value, 0
            return
        self.bad_rounds += 1
        still_frozen = [g for g in opts["order"] if g in self.frozen_at(epoch + 1)]
        if self.bad_rounds >= opts["patience"] and still_frozen:
            self.plateau_events[epoch + 1] = still_frozen[0]
            self.bad_rounds = 0
            log.info(
                "Fine-tune: %s has not improved for %d validation(s) (best %.4f); %s unfreezes at epoch %d",
                opts["monitor"],
                opts["patience"],
                self.best,
                still_frozen[0],
                epoch + 1,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_events": dict(self.plateau_events), "best": self.best, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateau_events = {int(e): g for e, g in state["plateau_events"].items()}
        self.best, self.bad_rounds = state["best"], state["bad_rounds"]
        self._applied = None


def _plateau_options(on_plateau: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not on_plateau:
        return None
    defaults = {"monitor": "val/acc", "mode": "max", "patience": 2, "min_delta": 0.0, "order": None}
    unknown = sorted(set(on_plateau) - set(defaults))
    if unknown:
        raise ConfigError(f"finetune.on_plateau has unknown key(s) {unknown}; the keys are {sorted(defaults)}.")
    opts = {**defaults, **on_plateau}
    if (
        opts["monitor"] not in MONITORS
        or opts["mode"] not in ("max", "min")
        or int(opts["patience"]) < 1
        or opts["min_delta"] < 0
    ):
        raise ConfigError(
            f"finetune.on_plateau has monitor={opts['monitor']}, mode={opts['mode']}, patience={opts['patience']}, "
            f"min_delta={opts['min_delta']}: monitor must be one of {list(MONITORS)}, mode max or min, patience >= 1 "
            "and min_delta >= 0."
        )
    opts["order"] = None if opts["order"] is None else list(opts["order"])
    return opts
