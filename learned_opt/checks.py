"""Config value checks, one style for every architecture (and for ``learned_opt.dmd``).

A config declares its rules as ``(field, ok, requirement)`` triples (:data:`Check`);
:func:`check_values` raises ``LearnedOptError("<Config>.<field> must be <requirement>, got
<value>")`` for the first failing one. :func:`check_field_types` checks every field of a
dataclass against its annotation first (the meta-training configs, whose values come from
JSON and ``--set``).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterable

import numpy as np

from learned_opt.errors import LearnedOptError

Check = tuple[str, bool, str]   # (field, ok, requirement)


def check_values(values: Any, checks: Iterable[Check], owner: str = "") -> None:
    """Raise ``LearnedOptError("<owner>.<field> must be <requirement>, got <value>")`` for the
    first failing check; ``values`` has the fields as attributes. ``checks`` is consumed
    lazily, so a check may assume that the ones before it passed."""
    for field, ok, requirement in checks:
        if not ok:
            prefix = f"{owner}." if owner else ""
            raise LearnedOptError(
                f"{prefix}{field} must be {requirement}, got {getattr(values, field)!r}")


def is_int(x, low: int = 1) -> bool:
    """An integer (Python or numpy, not bool) ``>= low``."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= low


def is_real(x) -> bool:
    """A finite real number (Python or numpy, not bool)."""
    number = isinstance(x, (int, float, np.integer, np.floating))
    return number and not isinstance(x, bool) and math.isfinite(x)


def are_ints(xs, low: int = 1) -> bool:
    """A non-empty sequence of integers ``>= low``."""
    return bool(xs) and all(is_int(x, low) for x in xs)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               dict: "a JSON object", tuple: "a list"}


def check_type(key: str, value, kind, error: type[LearnedOptError] = LearnedOptError, lead: str = ""):
    """``value`` checked against annotation ``kind`` (int, float, bool, str, dict, tuple or an
    ``X | None``); returns it normalised (an integral float for an int field becomes the int, a
    list for a tuple field stays a list); an error naming the key, the expected type and the
    value otherwise (``error(lead + "<key> must be ...")``). NaN and infinities are rejected: no
    field means anything by them."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    if value is None and type(None) in options:
        return None
    base = next(o for o in options if o is not type(None))
    ok = False
    if base is bool:
        ok = isinstance(value, bool)
    elif base in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise error(f"{lead}{key} must be a finite number, got {value!r}")
            if base is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if base is float:   # one JSON form per value (1 and 1.0 are the same config)
                try:
                    value = float(value)
                except OverflowError:
                    raise error(f"{lead}{key} must be a finite number, got a "
                                      f"{len(str(abs(value)))}-digit integer") from None
            ok = base is float or isinstance(value, int)
    elif base is tuple:
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, base)
    if not ok:
        want = _TYPE_NAMES.get(base, base.__name__) + (" or null" if type(None) in options else "")
        raise error(f"{lead}{key} must be {want}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def check_field_types(obj, prefix: str = "", error: type[LearnedOptError] = LearnedOptError,
                      lead: str = "") -> None:
    """Check (and normalise in place) every field of a frozen dataclass by its annotation
    (:func:`check_type`); ``prefix`` goes before each field name in messages."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = check_type(prefix + f.name, getattr(obj, f.name), hints[f.name], error, lead)
        object.__setattr__(obj, f.name, value)


__all__ = ["Check", "check_values", "is_int", "is_real", "are_ints", "check_type", "check_field_types"]
