"""Errors a user can cause and fix: reported as one paragraph, without a traceback."""

import os
import sys
from typing import Any, Callable


class UserError(Exception):
    """A bad config value, missing or corrupt data, or a wrong checkpoint.

    The message is the whole report: it names the value, the reason and the fix.
    `python -m mnist_lab` prints it and exits 1; HYDRA_FULL_ERROR=1 shows the traceback.
    """


class DataError(UserError):
    """Dataset files that are missing, truncated or not what they claim to be."""


class ConfigError(UserError):
    """A config value that is out of range or inconsistent with the rest of the config."""


def exit_on_user_error(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args); a UserError becomes its paragraph on stderr and exit status 1.

    HYDRA_FULL_ERROR=1 re-raises it, traceback included.
    """
    try:
        return fn(*args)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"\nError: {e}", file=sys.stderr)
        sys.exit(1)
