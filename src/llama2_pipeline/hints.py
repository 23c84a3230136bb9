"""One check of a params value against a dataclass field's type hint, for the config dataclasses
of the libraries (``data.config``, ``training.config``). No Kedro, no MLflow, no torch."""

from __future__ import annotations

import types
import typing
from typing import Any


def value_matches(value: Any, hint: Any) -> bool:
    """Whether a params value (YAML-loaded) fits ``hint``: bool is not a number, an int is a float,
    a list also fits a tuple hint (element by element) and a list hint; unknown hints accept."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is list or origin is list:
        return isinstance(value, (list, tuple))
    if origin is tuple:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(value_matches(v, a) for v, a in zip(value, args)))
    return isinstance(value, hint) if isinstance(hint, type) else True
