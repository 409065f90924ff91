"""Field checks shared by every config dataclass: each value has its field's type and lies in its range.

Every config (``ModelConfig``, ``TrainConfig``, ``GenerationConfig``, ``SearchConfig``, ...) calls
``check_fields`` at the top of ``__post_init__``, so a command-line flag, a TOML/JSON config file and a
Python call all get the same one-line error, raised before any work starts:

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     beta1: float = 0.9
    ...     def __post_init__(self):
    ...         check_fields(self, {"beta1": "[0, 1)"})
    >>> Opt(beta1=2.0)
    Traceback (most recent call last):
    qkv.errors.ConfigError: beta1=2.0 must be in [0, 1)

Types follow the hints: ``int`` refuses bools and floats, ``float`` takes ints but refuses NaN and infinities,
``str`` refuses the empty string, ``X | None`` takes None, ``Literal`` takes its values. Ranges are intervals
written as in mathematics, ``"[1, inf)"``, ``"(0, 1]"``; None always passes the range check (it means "unset").
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from .errors import ConfigError, InputError


def check_fields(obj, ranges: dict[str, str] | None = None, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` for the first field whose value has the wrong type or lies outside its interval."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise error(f"{f.name}={value!r} must be {describe(hints[f.name])}")
    for name, interval in (ranges or {}).items():
        value = getattr(obj, name)
        if value is not None and not _inside(value, interval):
            raise error(f"{name}={value!r} must be {_interval_words(interval)}")


def check_positive_int(name: str, value, error: type[Exception] = InputError) -> None:
    """For plain function arguments (a batch size, a thread count) that no dataclass declares."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name}={value!r} must be an integer >= 1")


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) and value != ""
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (tuple, list):
        item = args[0] if args else Any
        return isinstance(value, origin) and all(_matches(v, item) for v in value)
    return isinstance(value, origin or hint)


def describe(hint) -> str:
    """Words for a type hint, for error messages: ``int | None`` -> 'an integer or None'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin in (tuple, list):
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a non-empty string"}.get(
        hint, f"a {getattr(hint, '__name__', hint)}")


def _bounds(interval: str) -> tuple[float, float, bool, bool]:
    low, high = (float(x) for x in interval[1:-1].split(","))
    return low, high, interval[0] == "[", interval[-1] == "]"


def _inside(value: float, interval: str) -> bool:
    low, high, low_closed, high_closed = _bounds(interval)
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    return above and below


def _interval_words(interval: str) -> str:
    low, high, low_closed, high_closed = _bounds(interval)
    show = lambda x: str(int(x)) if x.is_integer() else str(x)   # noqa: E731
    if math.isinf(high):
        return f"{'>=' if low_closed else '>'} {show(low)}"
    return f"in {interval[0]}{show(low)}, {show(high)}{interval[-1]}"
