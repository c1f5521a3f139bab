"""Errors a user can cause and fix, and the one boundary where they become a paragraph and an exit code.

Every entry point (`python -m mnist_lab`, the tools in mnist_lab/tools/) runs its work through
`user_errors()`: a UserError, also when Hydra's instantiate wrapped it, is printed as its
own paragraph on stderr, without a traceback, and the process exits with its `exit_code`
(1; 130/143 after Ctrl-C/SIGTERM). HYDRA_FULL_ERROR=1 lets it through with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A bad config value, missing or corrupt data, or a wrong checkpoint.

    The message is the whole report: it names the value, the reason and the fix.
    """

    exit_code = 1


class DataError(UserError):
    """Dataset files that are missing, truncated or not what they claim to be."""


class ConfigError(UserError):
    """A config value that is out of range or inconsistent with the rest of the config."""


class CheckpointError(UserError):
    """A checkpoint or weights file that is missing, unreadable, or does not fit the network."""


class NonFiniteLossError(UserError):
    """The training loss or the weights became NaN or infinite."""


class RunInterrupted(UserError):
    """SIGINT or SIGTERM stopped training; the state was saved to checkpoints/last.ckpt."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


def user_error(e: BaseException | None) -> UserError | None:
    """The UserError behind e, also when hydra.utils.instantiate wrapped it, or None."""
    while e is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


def failure_message(e: BaseException) -> str:
    """A user error's own paragraph; any other exception with its type."""
    return str(user_error(e) or f"{type(e).__name__}: {e}")


def full_errors() -> bool:
    """HYDRA_FULL_ERROR=1: show tracebacks instead of the one-paragraph report."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError raised inside into its paragraph on stderr and its exit code."""
    try:
        yield
    except Exception as e:
        error = user_error(e)
        if error is None or full_errors():
            raise
        print(f"\nError: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
