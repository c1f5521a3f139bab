"""Where a config value came from: a command-line override, an experiment file, a group file, conf/config.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mnist_lab import CONF_DIR, ROOT_DIR
from mnist_lab.errors import UserError


class Origins:
    """Finds where a config value was set: override, experiment file, group file, conf/config.yaml.

    Args:
        overrides: the command-line overrides, as Hydra records them.
        choices: group -> chosen option (Hydra's runtime.choices); None outside Hydra.
        saved_config: the run's saved config when the run is a resume, else None.
    """

    def __init__(
        self, overrides: list[str], choices: dict[str, str | None] | None, saved_config: str | None = None
    ) -> None:
        self.overrides, self.choices, self.saved_config = overrides, choices or {}, saved_config

    @classmethod
    def from_hydra(cls, overrides: list[str] | None, choices: dict[str, str | None] | None) -> Origins:
        from hydra.core.hydra_config import HydraConfig

        from mnist_lab.rundir import saved_config_of_resumed_run

        saved = None
        if (overrides is None or choices is None) and HydraConfig.initialized():
            hc = HydraConfig.get()
            overrides = list(hc.overrides.task) if overrides is None else overrides
            choices = dict(hc.runtime.choices) if choices is None else choices
            saved = saved_config_of_resumed_run()
        return cls(list(overrides or []), choices, saved)

    def __call__(self, path: str) -> str:
        parsed = [(ov, *ov.partition("=")[::2]) for ov in reversed(self.overrides)]  # the last one wins
        for ov, key, _ in parsed:  # a value set on the command line
            key = key.lstrip("+~")
            if key not in self.choices and (path == key or path.startswith(key + ".")):
                return f"the command-line override `{ov}`"
        for ov, key, value in parsed:  # a group file chosen on the command line
            key = key.lstrip("+~").replace("/", ".")
            if key.replace(".", "/") in self.choices and (path == key or path.startswith(key + ".")):
                return f"the config group file conf/{key.replace('.', '/')}/{value}.yaml, chosen by the command-line override `{ov}`"
        if self.saved_config:
            return f"the run's saved config {self.saved_config}"
        experiment = self.choices.get("experiment")
        if experiment and _has_path(ROOT_DIR / "experiments" / f"{experiment}.yaml", path):
            return f"the experiment file experiments/{experiment}.yaml"
        for group in sorted(self.choices, key=len, reverse=True):
            dotted = group.replace("/", ".")
            if group.startswith("hydra") or not (path == dotted or path.startswith(dotted + ".")):
                continue
            choice = self.choices[group]
            return f"the config group file conf/{group}/{choice}.yaml" if choice else f"the `{group}` config group"
        top = path.split(".")[0]
        if (CONF_DIR / top).is_dir():
            return f"the `{top}` config group (conf/{top}/)"
        return "conf/config.yaml"

    def explain(self, p: Any) -> str:
        """One paragraph for a config.objects.Problem: key, value, reason, where it came from."""
        value = p.value if isinstance(p.value, str) and p.value == "???" else repr(p.value)
        return f"`{p.path}` = {value} {p.reason.rstrip('.')}. It came from {self(p.path)}; fix it there."

    def attribute(self, error: UserError) -> UserError:
        """The same error with where its key came from, when the message starts with `key=value`."""
        m = re.match(r"([a-z_][\w.]*)=", str(error))
        if not m:
            return error
        try:
            return type(error)(f"{error} It came from {self(m.group(1))}.")
        except TypeError:  # an error class with another constructor: keep it as it is
            return error


def _has_path(yaml_file: Path, path: str) -> bool:
    try:
        node = yaml.safe_load(yaml_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
