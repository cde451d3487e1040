"""The LearnedOptimizer interface shared by every architecture.

theta is the pytree of meta-parameters. All functions are pure and jit-able:

    init(key) -> theta
    opt_init(theta, params, num_steps) -> state
    opt_update(theta, state, grads, params, loss, key) -> (new_params, state)

``as_optax(theta)`` wraps a trained optimizer as an
``optax.GradientTransformationExtraArgs`` (the loss is passed as ``value=``).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import jax

PyTree = Any


class LearnedOptError(ValueError):
    """A user-caused problem with a learned optimizer (bad config, bad checkpoint)."""


class CheckpointError(LearnedOptError):
    """A checkpoint cannot be read: corrupt, foreign format or another architecture."""


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls, d: dict):
    """Build a frozen dataclass from a dict, rejecting unknown keys with a clear error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise LearnedOptError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(names)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**clean)


class LearnedOptimizer:
    """Base class. Subclasses set ``architecture`` and ``Config`` (a frozen dataclass)."""

    architecture: ClassVar[str] = "base"
    Config: ClassVar[type] = None  # type: ignore[assignment]
    # Whether opt_update uses its ``key``; the optax adapter only carries a PRNG
    # key in its state when this is True.
    needs_key: ClassVar[bool] = True

    def __init__(self, config=None, **overrides):
        if config is None:
            config = config_from_dict(self.Config, overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    def init(self, key: jax.Array) -> PyTree:
        raise NotImplementedError

    def opt_init(self, theta: PyTree, params: PyTree, num_steps: int | None = None) -> PyTree:
        raise NotImplementedError

    def opt_update(self, theta, state, grads, params, loss, key):
        raise NotImplementedError

    def as_optax(self, theta: PyTree, num_steps: int | None = None):
        from learned_opt.optax_adapter import as_optax
        return as_optax(self, theta, num_steps)

    def describe(self) -> dict:
        return {"architecture": self.architecture, "config": config_to_dict(self.config)}

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(config_to_dict(self.config))})"


_REGISTRY: dict[str, type[LearnedOptimizer]] = {}


def register(cls: type[LearnedOptimizer]) -> type[LearnedOptimizer]:
    _REGISTRY[cls.architecture] = cls
    return cls


def architectures() -> dict[str, type[LearnedOptimizer]]:
    return dict(_REGISTRY)


def make(architecture: str, config: dict | None = None) -> LearnedOptimizer:
    """Build an optimizer by architecture name and a config dict."""
    if architecture not in _REGISTRY:
        raise LearnedOptError(
            f"unknown learned-optimizer architecture {architecture!r}; "
            f"known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[architecture]
    return cls(config_from_dict(cls.Config, config or {}))
