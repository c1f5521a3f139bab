"""Validate a composed config before anything is built or loaded: keys, types, ranges, files.

Nothing here lists the groups' keys by hand. A node with a `_target_` is checked against the
target's signature (unknown keys, with a "did you mean"; types from its annotations), so a
new model, optimizer, callback or fine-tune strategy is covered by its own constructor. A
group node without a target (`scheduler`, `paths`) may hold the keys that its conf/ files use;
the top level, the keys of conf/config.yaml and its groups. Value ranges that annotations
cannot say (a learning rate > 0) are the RULES table (rules.py); values that do not fit each
other, the dataset or the machine, crosschecks.py. Every problem is one paragraph naming
the key, the value, what is allowed and where it came from: a command-line override, an
experiment file, a group file or conf/config.yaml.
"""

from __future__ import annotations

import difflib
import inspect
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab import CONF_DIR
from mnist_lab.config.crosschecks import check_across
from mnist_lab.config.objects import Problem, check_objects
from mnist_lab.config.origins import Origins
from mnist_lab.config.rules import PATH_KEYS, RULES, is_int
from mnist_lab.config.types import conforms, describe, type_hints
from mnist_lab.errors import ConfigError
from mnist_lab.pretrained import BUNDLED

# Keys that steer hydra.utils.instantiate instead of being passed to the target.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def validate(cfg: DictConfig, overrides: list[str] | None = None, choices: dict[str, str | None] | None = None) -> None:
    """Raise one ConfigError listing every problem of `cfg`, each as one paragraph; change nothing else.

    Objects are built to check how they fit (config/objects.py), with every global RNG left
    as it was: seeding and building the run's own objects are train()'s steps.

    Args:
        cfg: the composed config.
        overrides: the command-line overrides (read from HydraConfig when None and Hydra runs).
        choices: group -> chosen file, e.g. {"model": "cnn"} (from HydraConfig likewise).
    """
    origins = Origins.from_hydra(overrides, choices)
    problems = check_keys_types_ranges(cfg)
    if not problems:  # cross-checks and objects built from values of wrong types would only add noise
        problems = [*check_across(cfg), *check_objects(cfg)]
    if problems:
        head = f"{len(problems)} problems in the config:\n\n" if len(problems) > 1 else ""
        raise ConfigError(head + "\n\n".join(origins.explain(p) for p in problems))


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
        if (
            any(fnmatch(path, pattern) for pattern in PATH_KEYS)
            and isinstance(value, str)
            and value not in ("", BUNDLED)
        ):
            if not Path(value).expanduser().exists():
                problems.append(
                    Problem(
                        path,
                        value,
                        "names a file that does not exist: give the path of an existing checkpoint (.ckpt), or null",
                    )
                )
    trainer = cfg.get("trainer")
    if isinstance(trainer, DictConfig):
        lo, hi = trainer.get("min_epochs"), trainer.get("max_epochs")
        if is_int(lo) and is_int(hi) and hi >= 1 and lo > hi:
            problems.append(
                Problem(
                    "trainer.min_epochs",
                    lo,
                    f"is larger than trainer.max_epochs={hi}: allowed is min_epochs <= max_epochs",
                )
            )
    return problems


def _leaves(node: Any, prefix: str = ""):
    """(dotted path, resolved value) of every scalar and list in the config; lists are plain lists."""
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        path = prefix + str(key)
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
        Problem(
            str(k), _raw(cfg, k), _unknown_reason(str(k), allowed, "the top level of the config (conf/config.yaml)")
        )
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
        path = prefix + str(key)
        found, value = _value(node, key, path, problems)
        if found and isinstance(value, DictConfig):
            _check_node(value, path, problems)


def _value(node: DictConfig, key: Any, path: str, problems: list[Problem]) -> tuple[bool, Any]:
    """(True, node[key]); or (False, None) with a Problem when it is `???` or does not resolve."""
    if OmegaConf.is_missing(node, key):
        problems.append(
            Problem(path, "???", "is required but not set: give it a value on the command line or in the config")
        )
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
    # Unresolved: an interpolation is no collection member, and one that fails is reported by _walk.
    values = [v for _, v in node.items_ex(resolve=False)]
    is_collection = all(v is None or (isinstance(v, DictConfig) and "_target_" in v) for v in values)
    if not is_collection and "." not in path:  # a group node like `scheduler` or `paths`
        known = _group_file_keys(path)
        if known:
            for k in node.keys():
                if str(k) not in known:
                    problems.append(
                        Problem(
                            path + "." + str(k),
                            _raw(node, k),
                            _unknown_reason(str(k), known, f"the `{path}` config group (conf/{path}/*.yaml)"),
                        )
                    )
    _walk(node, f"{path}.", problems)


def _check_target(node: DictConfig, path: str, problems: list[Problem]) -> None:
    target_name = node._target_
    try:
        target = get_object(target_name) if isinstance(target_name, str) else target_name
    except Exception as e:  # ImportError, AttributeError: a stale or misspelt _target_
        problems.append(
            Problem(
                f"{path}._target_",
                target_name,
                f"cannot be imported ({type(e).__name__}: {e}): give the public import path of a class or function",
            )
        )
        return
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        _walk(node, f"{path}.", problems)
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = type_hints(target)
    where = f"`{path}`, which configures {target_name}"
    for key in node.keys():
        key = str(key)
        if key in INSTANTIATE_KEYS:
            continue
        sub = f"{path}.{key}"
        if key not in params and not takes_any:
            allowed = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            problems.append(
                Problem(
                    sub,
                    _raw(node, key),
                    _unknown_reason(key, allowed, where, f"The allowed keys are the arguments of {target_name}."),
                )
            )
            continue
        found, value = _value(node, key, sub, problems)
        if not found:
            continue
        hint = hints.get(key)
        if hint is not None:
            plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
            if not isinstance(value, DictConfig) and not conforms(plain, hint):
                problems.append(
                    Problem(
                        sub,
                        plain,
                        f"has the wrong type ({type(plain).__name__}): {target_name} takes {describe(hint)} for `{key}`",
                    )
                )
                continue
        if isinstance(value, DictConfig):
            _check_node(value, sub, problems)
