"""The global random number generators (torch, CUDA, numpy, Python) as one state: read, restored, kept."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every global RNG as tensors and plain numbers: loadable with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = cast(Any, np.random.get_state())  # the legacy 5-tuple
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_kept() -> Iterator[None]:
    """Run a block that may draw random numbers; afterwards every global RNG is where it was before."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
