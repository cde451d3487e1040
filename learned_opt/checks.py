"""Config value checks, one style for every architecture (and for ``learned_opt.dmd``).

A config declares its rules as ``(field, ok, requirement)`` triples (:data:`Check`);
:func:`check_values` raises ``LearnedOptError("<Config>.<field> must be <requirement>, got
<value>")`` for the first failing one.
"""
from __future__ import annotations

import math
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


__all__ = ["Check", "check_values", "is_int", "is_real", "are_ints"]
