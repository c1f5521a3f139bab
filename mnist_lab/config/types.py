"""Whether a YAML value fits a constructor's annotation, and how to say what the annotation allows."""

from __future__ import annotations

import collections.abc as abc
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pydantic
import torch


def type_hints(target: Any) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # annotations that do not evaluate here: check keys only
        return {}


# A class pydantic has no schema for (a Tensor, a Callback) is checked with isinstance.
_ARBITRARY = pydantic.ConfigDict(arbitrary_types_allowed=True)


def conforms(value: Any, hint: Any) -> bool:
    """Whether a YAML value can be passed where `hint` is annotated (True when unsure).

    YAML holds JSON's types, so pydantic's strict JSON mode is the rule: lists where tuples
    are annotated, strings for paths, ints for floats, but no bools for ints and no "3" for 3.
    """
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return True  # nodes that instantiate builds into objects first
    try:
        pydantic.TypeAdapter(hint, config=_ARBITRARY).validate_json(json.dumps(value), strict=True)
    except pydantic.ValidationError:
        return False
    except Exception:  # no schema for the annotation (a dataclass, a forward reference): unsure
        pass
    return True


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):  # Tensor alternatives: YAML cannot hold them anyway
        return " or ".join(dict.fromkeys(describe(a) for a in args if a is not torch.Tensor))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if origin in (tuple, list, abc.Sequence) or hint in (tuple, list):
        return "a list" + (f" of ({describe(args[0])})" if args else "")
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true/false"
    if hint is str or hint is Path:
        return "a string"
    return f"a {getattr(hint, '__name__', str(hint))} object (a node with _target_)"
