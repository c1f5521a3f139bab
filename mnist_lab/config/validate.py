"""Validate a composed config before anything is built or loaded: keys, types, ranges, files.

Nothing here lists the groups' keys by hand. A node with a `_target_` is checked against the
target's signature (unknown keys, with a "did you mean"; types from its annotations), so a
new model, optimizer, callback or fine-tune strategy is covered by its own constructor. A
group node without a target (`scheduler`, `paths`) may hold the keys that its conf/ files use;
the top level, the keys of conf/config.yaml and its groups. Value ranges that annotations
cannot say (a learning rate > 0) are the RULES table. Every problem is one paragraph naming
the key, the value, what is allowed and where it came from: a command-line override, an
experiment file, a group file or conf/config.yaml.
"""

from __future__ import annotations

import collections.abc as abc
import difflib
import inspect
import math
import os
import re
import types
import typing
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Literal, Union

import torch
import yaml
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab import CONF_DIR
from mnist_lab.config.objects import Built, Problem, build_and_check
from mnist_lab.config.origins import Origins
from mnist_lab.errors import ConfigError

# Keys that steer hydra.utils.instantiate instead of being passed to the target.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(low: float, optional: bool = False, integer: bool = True) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or ((_int(v) if integer else _num(v)) and v >= low)


def _positive(v: Any) -> bool:
    return _num(v) and v > 0


def _fraction(v: Any) -> bool:  # [0, 1)
    return _num(v) and 0 <= v < 1


def _limit_batches(v: Any) -> bool:  # Lightning: an int count of batches or a float share in [0, 1]
    return v is None or (_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1)


# (dotted-path pattern, check, what is allowed). Patterns are fnmatch-style over the whole path,
# so one rule covers every choice of a group that has the key (any optimizer's lr).
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: _int(v) and 0 <= v < 2**32, "an integer in [0, 4294967295] (numpy's seed range)"),
    ("optimizer.lr", _positive, "a learning rate: a number > 0 (the article's SGD uses 0.001)"),
    ("optimizer.weight_decay", _at_least(0, integer=False), "a number >= 0"),
    ("optimizer.momentum", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1] (0.9 is usual)"),
    ("optimizer.betas", lambda v: len(v) == 2 and all(_fraction(b) for b in v), "two numbers in [0, 1), e.g. [0.9, 0.999]"),
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
    ("data.labels_per_class", _at_least(1, optional=True), "null (all labels) or an integer >= 1"),
    ("data.train_size", _at_least(1, optional=True), "null (all images) or an integer >= 1"),
    ("data.std", _positive, "a number > 0"),
    ("model.dropout", _fraction, "a probability in [0, 1)"),
    ("model.*channels", _at_least(1), "an integer >= 1"),
    ("model.hidden*", _at_least(1), "an integer >= 1"),
    ("trainer.max_epochs", lambda v: v is None or v == -1 or (_int(v) and v >= 1), "an integer >= 1 (or -1: no limit)"),
    ("trainer.min_epochs", _at_least(0, optional=True), "null or an integer >= 0"),
    ("trainer.log_every_n_steps", _at_least(1, optional=True), "an integer >= 1"),
    ("trainer.check_val_every_n_epoch", _at_least(1, optional=True), "null or an integer >= 1"),
    ("trainer.limit_*_batches", _limit_batches, "null, an integer >= 0 (batches) or a float in [0, 1] (a share)"),
    ("checkpoint_every_n_steps", _at_least(1, optional=True), "null or an integer >= 1"),
]

# Keys whose value must name an existing file (or run directory, for a fine-tune start).
PATH_KEYS = ("ckpt_path", "*.checkpoint")


def validate(cfg: DictConfig, overrides: list[str] | None = None, choices: dict[str, str | None] | None = None) -> Built:
    """Raise one ConfigError listing every problem of `cfg`, each as one paragraph; else return the built network and strategy.

    Args:
        cfg: the composed config.
        overrides: the command-line overrides (read from HydraConfig when None and Hydra runs).
        choices: group -> chosen file, e.g. {"model": "cnn"} (from HydraConfig likewise).
    """
    origins = Origins.from_hydra(overrides, choices)
    problems = check_keys_types_ranges(cfg)
    built = Built(None, None, problems)
    if not problems:  # building objects from a config with wrong types would only add noise
        built = build_and_check(cfg)
        problems = built.problems
    if problems:
        head = f"{len(problems)} problems in the config:\n\n" if len(problems) > 1 else ""
        raise ConfigError(head + "\n\n".join(origins.explain(p) for p in problems))
    return built


# ---------------------------------------------------------------------------------------
# Keys, types and ranges: the config alone, nothing instantiated.


def check_keys_types_ranges(cfg: DictConfig) -> list[Problem]:
    problems = _check_top_level(cfg)
    _walk(cfg, "", problems)
    for path, value in _leaves(cfg):
        for pattern, ok, allowed in RULES:
            if fnmatch(path, pattern) and not any(p.path == path for p in problems):
                try:
                    good = ok(value)
                except (TypeError, ValueError):
                    good = False
                if not good:
                    problems.append(Problem(path, value, f"is out of range: allowed is {allowed}"))
        if any(fnmatch(path, pattern) for pattern in PATH_KEYS) and isinstance(value, str) and value:
            if not Path(value).expanduser().exists():
                problems.append(Problem(path, value, "names a file that does not exist: give the path of an existing checkpoint (.ckpt), or null"))
    trainer = cfg.get("trainer")
    if isinstance(trainer, DictConfig):
        lo, hi = trainer.get("min_epochs"), trainer.get("max_epochs")
        if _int(lo) and _int(hi) and hi >= 1 and lo > hi:
            problems.append(Problem("trainer.min_epochs", lo, f"is larger than trainer.max_epochs={hi}: allowed is min_epochs <= max_epochs"))
    return problems


def _leaves(node: Any, prefix: str = ""):
    """(dotted path, resolved value) of every scalar and list in the config; lists are plain lists."""
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        path = f"{prefix}{key}"
        try:
            value = node[key]
        except OmegaConfBaseException:
            continue  # reported by _walk
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{path}.")
        elif isinstance(value, ListConfig):
            yield path, OmegaConf.to_container(value, resolve=True)
        else:
            yield path, value


def _yaml_keys(path: Path) -> set[str]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return set()
    return {str(k) for k in data} - {"defaults"} if isinstance(data, dict) else set()


def _check_top_level(cfg: DictConfig) -> list[Problem]:
    """Top-level keys: those of conf/config.yaml and the groups of its defaults list."""
    primary = CONF_DIR / "config.yaml"
    data = yaml.safe_load(primary.read_text()) or {}
    allowed = {str(k) for k in data if k != "defaults"}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            allowed |= {str(k).split("/")[0].removeprefix("override ").strip() for k in entry}
    allowed |= {p.name for p in CONF_DIR.iterdir() if p.is_dir()}  # every group folder
    return [
        Problem(str(k), _raw(cfg, k), _unknown_reason(str(k), allowed, "the top level of the config (conf/config.yaml)"))
        for k in cfg.keys()
        if str(k) not in allowed
    ]


def _raw(node: DictConfig, key: Any) -> Any:
    try:
        value = node[key]
    except OmegaConfBaseException:
        return "?"
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


def _unknown_reason(key: str, allowed: set[str], where: str, see: str = "") -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], sorted(allowed), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
    listing = f" Allowed keys: {', '.join(sorted(allowed))}." if len(allowed) <= 20 else f" {see}".rstrip()
    return f"is not a key of {where}: unknown key.{hint}{listing}"


def _group_file_keys(group_path: str) -> set[str] | None:
    """Union of the keys that conf/<group>/*.yaml use, or None when it is not a group folder."""
    folder = CONF_DIR / group_path.replace(".", "/")
    if not folder.is_dir():
        return None
    keys: set[str] = set()
    for f in folder.glob("*.yaml"):
        keys |= _yaml_keys(f)
    return keys


def _walk(node: DictConfig, prefix: str, problems: list[Problem]) -> None:
    """Check every node: missing values, unresolvable interpolations, target signatures."""
    for key in node.keys():
        path = f"{prefix}{key}"
        found, value = _value(node, key, path, problems)
        if found and isinstance(value, DictConfig):
            _check_node(value, path, problems)



def _value(node: DictConfig, key: Any, path: str, problems: list[Problem]) -> tuple[bool, Any]:
    """(True, node[key]); or (False, None) with a Problem when it is `???` or does not resolve."""
    if OmegaConf.is_missing(node, key):
        problems.append(Problem(path, "???", "is required but not set: give it a value on the command line or in the config"))
        return False, None
    try:
        return True, node[key]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        problems.append(Problem(path, _raw(node, key), f"cannot be resolved ({msg}): fix the interpolation"))
        return False, None


def _check_node(node: DictConfig, path: str, problems: list[Problem]) -> None:
    if "_target_" in node:
        _check_target(node, path, problems)
        return
    values = [node._get_node(k) for k in node.keys()]
    is_collection = all(v._is_none() or (isinstance(v, DictConfig) and "_target_" in v) for v in values)
    if not is_collection and "." not in path:  # a group node like `scheduler` or `paths`
        known = _group_file_keys(path)
        if known:
            for k in node.keys():
                if str(k) not in known:
                    problems.append(Problem(f"{path}.{k}", _raw(node, k), _unknown_reason(str(k), known, f"the `{path}` config group (conf/{path}/*.yaml)")))
    _walk(node, f"{path}.", problems)


def _check_target(node: DictConfig, path: str, problems: list[Problem]) -> None:
    target_name = node._target_
    try:
        target = get_object(target_name) if isinstance(target_name, str) else target_name
    except Exception as e:  # ImportError, AttributeError: a stale or misspelt _target_
        problems.append(Problem(f"{path}._target_", target_name, f"cannot be imported ({type(e).__name__}: {e}): give the public import path of a class or function"))
        return
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        _walk(node, f"{path}.", problems)
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _type_hints(target)
    where = f"`{path}`, which configures {target_name}"
    for key in node.keys():
        key = str(key)
        if key in INSTANTIATE_KEYS:
            continue
        sub = f"{path}.{key}"
        if key not in params and not takes_any:
            allowed = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            problems.append(Problem(sub, _raw(node, key), _unknown_reason(key, allowed, where, f"The allowed keys are the arguments of {target_name}.")))
            continue
        found, value = _value(node, key, sub, problems)
        if not found:
            continue
        hint = hints.get(key)
        if hint is not None:
            plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
            if not isinstance(value, DictConfig) and not _conforms(plain, hint):
                problems.append(Problem(sub, plain, f"has the wrong type ({type(plain).__name__}): {target_name} takes {_describe(hint)} for `{key}`"))
                continue
        if isinstance(value, DictConfig):
            _check_node(value, sub, problems)


def _type_hints(target: Any) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # annotations that do not evaluate here: check keys only
        return {}


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a YAML value can be passed where `hint` is annotated (True when unsure)."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _int(value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (Path, os.PathLike):
        return isinstance(value, str)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return not args or all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
    if origin in (list, set, frozenset, abc.Sequence, abc.MutableSequence) or hint in (list, set):
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    if origin in (dict, abc.Mapping, abc.MutableMapping) or hint is dict:
        return isinstance(value, (dict, DictConfig))
    if origin in (abc.Iterable, abc.Collection):
        return isinstance(value, list)
    if inspect.isclass(hint) and hint in (torch.Tensor, torch.device, torch.dtype):
        return False  # YAML cannot hold these; a Union offers the float/str alternative
    if inspect.isclass(hint) and hint.__module__ == "builtins":
        return isinstance(value, hint)
    if inspect.isclass(hint) and value is not None and not isinstance(value, (dict, DictConfig)):
        return isinstance(value, hint)  # a scalar where an object (a _target_ node) is expected
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):  # Tensor alternatives: YAML cannot hold them anyway
        return " or ".join(dict.fromkeys(_describe(a) for a in args if a is not torch.Tensor))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin in (tuple, list, abc.Sequence) or hint in (tuple, list):
        return "a list" + (f" of ({_describe(args[0])})" if args else "")
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true/false"
    if hint is str or hint is Path:
        return "a string"
    return f"a {getattr(hint, '__name__', str(hint))} object (a node with _target_)"

