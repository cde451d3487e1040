"""Hand-designed baseline optimizers, built through optax by name.

    make_baseline("adam", 1e-3)              -> optax.adam(1e-3)
    make_baseline("momentum", 0.01, momentum=0.9, nesterov=True)

Extra keyword arguments go to the optax constructor unchanged.
"""
from __future__ import annotations

from typing import Callable

import optax

from learned_opt.base import LearnedOptError


def _momentum(learning_rate, momentum=0.9, **kw):
    """Heavy ball: ``v <- momentum*v + g; p <- p - lr*v`` (optax.sgd with momentum)."""
    return optax.sgd(learning_rate, momentum=momentum, **kw)


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "momentum": _momentum,
    "rmsprop": optax.rmsprop,
}

# Sensible untuned defaults; evaluations should tune over a grid instead.
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "adam": 1e-3,
    "adamw": 1e-3,
    "sgd": 1e-2,
    "momentum": 1e-2,
    "rmsprop": 1e-3,
}


def baseline_names() -> list[str]:
    return sorted(_BUILDERS)


def make_baseline(name: str, learning_rate: float | optax.Schedule | None = None,
                  **kw) -> optax.GradientTransformation:
    """Build baseline ``name`` (see :func:`baseline_names`); ``learning_rate`` defaults
    to ``DEFAULT_LEARNING_RATES[name]``."""
    if name not in _BUILDERS:
        raise LearnedOptError(f"unknown baseline optimizer {name!r}; known: {baseline_names()}")
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATES[name]
    try:
        return _BUILDERS[name](learning_rate, **kw)
    except TypeError as e:
        raise LearnedOptError(f"bad options {sorted(kw)} for baseline {name!r}: {e}") from None
