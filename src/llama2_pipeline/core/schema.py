"""The one builder from plain parameters (YAML, JSON) to the project's config dataclasses.

Every params group of the recipe, and every config a library takes (``TrainConfig``,
``CleaningConfig``, ``PPOConfig``, ...), is a dataclass deriving from :class:`Config`. The builder
reads a field's type hint and checks the value against it: ``bool`` is not a number, an ``int``
is a ``float``, a list fills a ``tuple[...]`` element by element, ``Literal[...]`` is a choice,
``X | None`` accepts ``null``, a nested dataclass is built from a mapping, ``dict[str, X]`` and
``list[X]`` are checked value by value. Every problem is reported by its dotted path
(``sft.train.lr``), all of them at once::

    build(SFTStage, {"epochs": "two", ...}, "sft")
    ConfigError: 2 problems:
      - key 'sft.epochs' is 'two' (str), expected a number
      - unknown key 'sft.trian' (expected one of: eval, epochs, ...)

Cross-field rules live in a config's :meth:`Config.check`, which calls :func:`require` (a
failed rule names its field) and runs after the types are right. ``strict`` building (the
recipe's) also refuses a missing key that has a default, unless its field is marked
``optional(...)``: ``params.yaml`` states every value, the library defaults are for library users.

No project imports (the bottom layer), no torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping

_OPTIONAL = "params_optional"


class ConfigError(ValueError):
    """One or more malformed parameters; ``problems`` lists each with its dotted path."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = list(problems)
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            super().__init__(f"{head}{self.problems[0]}")
        else:
            super().__init__(f"{head}{len(self.problems)} problems:\n  - " + "\n  - ".join(self.problems))


class FieldError(ValueError):
    """Raised by :func:`require`: a cross-field rule failed at ``field`` (relative to the config)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def require(condition: bool, field: str, expected: str, value: Any = dataclasses.MISSING) -> None:
    """A rule of :meth:`Config.check`: raise :class:`FieldError` naming ``field`` unless ``condition``."""
    if not condition:
        got = "" if value is dataclasses.MISSING else f" is {value!r},"
        raise FieldError(field, f"{got} expected {expected}".lstrip(" ,"))


def optional(default: Any = None, **kw: Any) -> Any:
    """A field that ``params.yaml`` may leave out (derived by the stage, or a seldom-used knob)."""
    return dataclasses.field(default=default, metadata={_OPTIONAL: True}, **kw)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config dataclass: built from plain data, back to plain data, checked.

    Subclasses are ``@dataclass(frozen=True, kw_only=True)`` and override :meth:`check` for
    cross-field rules. ``Config(**plain)`` (as Kedro builds a typed node parameter) checks every
    field's type and builds nested configs from mappings, as :func:`build` does.
    """

    def __post_init__(self) -> None:
        hints, problems = _hints(type(self)), []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = _value(value, hints[f.name], f.name, False, problems)
            if checked is not value and checked is not None:
                object.__setattr__(self, f.name, checked)
        if problems:
            raise ConfigError(problems)
        try:
            self.check()
        except FieldError as e:
            raise ConfigError([_message(e.field, str(e))]) from None

    def check(self) -> None:
        """Cross-field rules (raise through :func:`require`)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "", *, strict: bool = False):
        """Build from plain data; a :class:`ConfigError` lists every bad key by its dotted path."""
        return build(cls, {} if data is None else data, path, strict=strict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), the inverse of :meth:`from_dict`."""
        return to_plain(self)

    def replace(self, **changes: Any):
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


def build(cls: type, data: Any, path: str = "", *, strict: bool = False) -> Any:
    """``cls`` built from ``data``; raise :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    out = _build(cls, data, path, strict, problems)
    if problems:
        raise ConfigError(problems)
    return out


def to_plain(obj: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, recursively (what YAML/JSON/MLflow take)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} values (" + ", ".join(describe(a) for a in args) + ")"
    if origin is list:
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return f"a mapping of names to {describe(args[1])}" if args else "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


# --- internals ---------------------------------------------------------------------------------

def _message(path: str, text: str) -> str:
    return f"key '{path}' {text}" if path else text


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, data: Any, path: str, strict: bool, problems: list[str]) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        problems.append(_message(path, f"is {data!r}, expected {describe(cls)}"))
        return None
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for key in data:
        if key not in fields:
            problems.append(f"unknown key '{_join(path, key)}' (expected one of: {', '.join(sorted(fields))})")
    for name, f in fields.items():
        where = _join(path, name)
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not has_default or (strict and not f.metadata.get(_OPTIONAL)):
                problems.append(f"missing key '{where}' ({describe(hints[name])})")
            continue
        kwargs[name] = _value(data[name], hints[name], where, strict, problems)
    if len(problems) > before:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a cross-field rule of cls (or of a nested config built directly)
        for p in e.problems:
            problems.append(p.replace("key '", f"key '{path}.", 1) if path and p.startswith("key '") else p)
    except FieldError as e:
        problems.append(_message(_join(path, e.field), str(e)))
    except (TypeError, ValueError) as e:
        problems.append(_message(path, str(e)) if path else str(e))
    return None


def _value(value: Any, hint: Any, path: str, strict: bool, problems: list[str]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:  # the first option the value fits (no problems recorded)
            trial: list[str] = []
            out = _value(value, a, path, strict, trial)
            if not trial:
                return out
        problems.append(_message(path, f"is {value!r}, expected {describe(hint)}"))
        return None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, strict, problems)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        problems.append(_message(path, f"is {value!r}, expected {describe(hint)}"))
        return None
    if origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_value(v, a, f"{path}[{i}]", strict, problems) for i, (v, a) in enumerate(zip(value, args)))
        problems.append(_message(path, f"is {value!r}, expected {describe(hint)}"))
        return None
    if origin is list or hint is list:
        if isinstance(value, (list, tuple)):
            return [_value(v, args[0], f"{path}[{i}]", strict, problems) if args else v for i, v in enumerate(value)]
        problems.append(_message(path, f"is {value!r}, expected {describe(hint)}"))
        return None
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            if not args:
                return dict(value)
            return {k: _value(v, args[1], _join(path, k), strict, problems) for k, v in value.items()}
        problems.append(_message(path, f"is {value!r}, expected {describe(hint)}"))
        return None
    if _scalar_ok(value, hint):
        return float(value) if hint is float else value
    problems.append(_message(path, f"is {value!r} ({type(value).__name__}), expected {describe(hint)}"))
    return None


def _scalar_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint) if isinstance(hint, type) else True
