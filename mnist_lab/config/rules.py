"""Value ranges that annotations cannot say (a learning rate > 0), by dotted config path."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(low: float, optional: bool = False, integer: bool = True) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or ((is_int(v) if integer else _num(v)) and v >= low)


def _positive(v: Any) -> bool:
    return _num(v) and v > 0


def _fraction(v: Any) -> bool:  # [0, 1)
    return _num(v) and 0 <= v < 1


def _limit_batches(v: Any) -> bool:  # Lightning: an int count of batches or a float share in [0, 1]
    return v is None or (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1)


# (dotted-path pattern, check, what is allowed). Patterns are fnmatch-style over the whole path,
# so one rule covers every choice of a group that has the key (any optimizer's lr).
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 4294967295] (numpy's seed range)"),
    ("optimizer.lr", _positive, "a learning rate: a number > 0 (the article's SGD uses 0.001)"),
    ("optimizer.weight_decay", _at_least(0, integer=False), "a number >= 0"),
    ("optimizer.momentum", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1] (0.9 is usual)"),
    (
        "optimizer.betas",
        lambda v: len(v) == 2 and all(_fraction(b) for b in v),
        "two numbers in [0, 1), e.g. [0.9, 0.999]",
    ),
    ("scheduler.interval", lambda v: v in ("epoch", "step"), "'epoch' or 'step'"),
    ("scheduler.scheduler.max_lr", _positive, "a learning rate > 0"),
    ("scheduler.scheduler.gamma", _positive, "a factor > 0"),
    ("scheduler.scheduler.step_size", _at_least(1), "an integer >= 1 (epochs)"),
    ("scheduler.scheduler.T_max", _at_least(1), "an integer >= 1 (epochs)"),
    ("scheduler.scheduler.pct_start", lambda v: _num(v) and 0 < v < 1, "a share in (0, 1)"),
    ("data.batch_size", _at_least(1), "a batch size: an integer >= 1"),
    ("data.eval_batch_size", _at_least(1), "a batch size: an integer >= 1"),
    ("data.num_classes", _at_least(2), "an integer >= 2"),
    ("data.val_size", _at_least(0), "an integer >= 0 (images held out for validation)"),
    (
        "data.labels_per_class",
        _at_least(0, optional=True),
        "null (all labels) or an integer >= 0 (0: no labels, for a semi-supervised finetune strategy)",
    ),
    ("data.train_size", _at_least(1, optional=True), "null (all images) or an integer >= 1"),
    ("data.std", _positive, "a number > 0"),
    ("model.dropout", _fraction, "a probability in [0, 1)"),
    ("model.*channels", _at_least(1), "an integer >= 1"),
    ("model.hidden*", _at_least(1), "an integer >= 1"),
    (
        "trainer.max_epochs",
        lambda v: v is None or v == -1 or (is_int(v) and v >= 1),
        "an integer >= 1 (or -1: no limit)",
    ),
    ("trainer.min_epochs", _at_least(0, optional=True), "null or an integer >= 0"),
    ("trainer.log_every_n_steps", _at_least(1, optional=True), "an integer >= 1"),
    ("trainer.check_val_every_n_epoch", _at_least(1, optional=True), "null or an integer >= 1"),
    ("trainer.limit_*_batches", _limit_batches, "null, an integer >= 0 (batches) or a float in [0, 1] (a share)"),
    # Semi-supervised strategies (mnist_lab/semisupervised.py).
    ("finetune.threshold", lambda v: _num(v) and 0 < v <= 1, "a softmax probability in (0, 1] (FixMatch uses 0.95)"),
    ("finetune.ratio", _at_least(1), "an integer >= 1: unlabelled images per labelled one (FixMatch uses 7)"),
    ("finetune.weight", _at_least(0, integer=False), "a number >= 0 (FixMatch uses 1)"),
    ("checkpoint_every_n_steps", _at_least(1, optional=True), "null or an integer >= 1"),
]

# Keys whose value must name an existing file (or run directory, for a fine-tune start).
PATH_KEYS = ("ckpt_path", "*.checkpoint")
