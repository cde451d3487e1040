"""Hand-designed baseline optimizers, built through optax by name.

    make_baseline("adam", 1e-3)              -> optax.adam(1e-3)
    make_baseline("momentum", 0.01, momentum=0.9, nesterov=True)
    make_baseline("adam_cosine", 1e-2, num_steps=400)   -> Adam at lr_t = lr (1 + cos(pi t / N)) / 2

Scheduled baselines (``SCHEDULED``) need the run's length ``num_steps`` N: ``adam_cosine`` is Adam
whose rate decays from ``lr`` at t = 0 to 0 at t = N by a half cosine (no warm-up); the others take
no schedule and ignore ``num_steps``.
``LR_GRIDS[name]`` is the log grid an evaluation tunes ``name``'s learning rate over.

Extra keyword arguments go to the optax constructor unchanged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import optax

from learned_opt.base import LearnedOptError


def _momentum(learning_rate, momentum=0.9, **kw):
    """Heavy ball: ``v <- momentum*v + g; p <- p - lr*v`` (optax.sgd with momentum)."""
    return optax.sgd(learning_rate, momentum=momentum, **kw)


def _adam_cosine(learning_rate, num_steps=None, **kw):
    """Adam at ``lr_t = lr (1 + cos(pi min(t, N) / N)) / 2`` (optax.cosine_decay_schedule); a
    schedule ``lr(t)`` given as the rate is multiplied by the decay."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise LearnedOptError(f"baseline 'adam_cosine' needs num_steps, the run's length "
                              f"(a positive int), got {num_steps!r}")
    if callable(learning_rate):
        decay = optax.cosine_decay_schedule(1.0, int(num_steps))
        return optax.adam(lambda t: learning_rate(t) * decay(t), **kw)
    return optax.adam(optax.cosine_decay_schedule(learning_rate, int(num_steps)), **kw)


SCHEDULED = ("adam_cosine",)   # baselines whose rate follows a schedule over num_steps

_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adam_cosine": _adam_cosine,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "momentum": _momentum,
    "rmsprop": optax.rmsprop,
    "lion": optax.lion,
    "radam": optax.radam,
}

# Sensible untuned defaults; evaluations should tune over a grid instead.
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "adam": 1e-3,
    "adam_cosine": 1e-3,
    "adamw": 1e-3,
    "sgd": 1e-2,
    "momentum": 1e-2,
    "rmsprop": 1e-3,
    "lion": 1e-4,
    "radam": 1e-3,
}


def log_grid(lo_exp: float, hi_exp: float) -> tuple[float, ...]:
    """Half-decade grid 10**lo_exp, 10**(lo_exp + 0.5), ..., 10**hi_exp (rounded to 3 digits)."""
    n = int(round((hi_exp - lo_exp) * 2)) + 1
    return tuple(float(f"{10 ** (lo_exp + 0.5 * i):.3g}") for i in range(n))


# Learning-rate grids to tune each baseline over (half-decades around where it works; Lion
# takes ~10x smaller steps than Adam, plain SGD/momentum larger ones).
LR_GRIDS: dict[str, tuple[float, ...]] = {
    "adam": log_grid(-5, 0),
    "adam_cosine": log_grid(-5, 0),
    "adamw": log_grid(-5, 0),
    "radam": log_grid(-5, 0),
    "rmsprop": log_grid(-5, 0),
    "lion": log_grid(-6, -1),
    "momentum": log_grid(-4, 1),
    "sgd": log_grid(-4, 1),
}


def baseline_names() -> list[str]:
    return sorted(_BUILDERS)


def make_baseline(name: str, learning_rate: float | optax.Schedule | None = None,
                  num_steps: int | None = None, **kw) -> optax.GradientTransformation:
    """Build baseline ``name`` (see :func:`baseline_names`); ``learning_rate`` defaults
    to ``DEFAULT_LEARNING_RATES[name]``; ``num_steps`` is the run's length, needed by the
    ``SCHEDULED`` baselines and ignored by the others."""
    if name not in _BUILDERS:
        raise LearnedOptError(f"unknown baseline optimizer {name!r}; known: {baseline_names()}")
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATES[name]
    options = {**kw, "num_steps": num_steps} if name in SCHEDULED else kw
    try:
        return _BUILDERS[name](learning_rate, **options)
    except TypeError as e:
        raise LearnedOptError(f"bad options {sorted(kw)} for baseline {name!r}: {e}") from None
