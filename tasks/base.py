"""Task and TaskFamily: the inner problems a learned optimizer trains.

A Task is a bundle of pure functions over pytrees; a TaskFamily splits a
distribution of tasks into a *static* part (shapes, dataset, batch size: fixed
per family, so one compiled function serves a whole population) and a *dynamic*
part ``cfg`` (an array pytree: activation index, init scale, ...) that can be
vmapped over.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from chex import ArrayTree as PyTree

from learned_opt.errors import LearnedOptError

Batch = Any


class TaskError(LearnedOptError):
    """A user-caused problem with a task or dataset (unknown name, bad value)."""


class DatasetNotFoundError(TaskError):
    """A dataset is not available on this machine; the message says how to provide it."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One inner problem.

    init(key) -> params
    loss(params, key, batch) -> scalar
    sample_batch(key, split="train") -> batch   (gathered on device, jit-able)
    normalizer(loss) -> scalar on a task-independent scale (for meta-losses)
    """

    name: str
    init: Callable[[jax.Array], PyTree]
    loss: Callable[[PyTree, jax.Array, Batch], jax.Array]
    sample_batch: Callable[..., Batch]
    normalizer: Callable[[jax.Array], jax.Array] = lambda x: x
    # Full-split evaluation, (params, split) -> scalar mean loss; None when the
    # task has no finite split (e.g. quadratics), then callers average batches.
    eval_loss: Callable[..., jax.Array] | None = None
    # The exact expected training loss, params -> scalar (the mean over the data distribution),
    # cheap enough to evaluate at every step; None when there is none. When set, a training
    # run's loss curve records it instead of the step batch's loss (tasks.training.train): for
    # the synthetic quadratics, whose batch loss is mostly noise near the optimum.
    expected_loss: Callable[..., jax.Array] | None = None


class TaskFamily:
    """A distribution over tasks sharing static shapes.

    Subclasses set ``name`` and implement ``sample`` and ``task``.
    ``sample(key)`` returns an array pytree (vmappable); ``task(cfg)`` builds
    a Task whose functions close over ``cfg`` (they may be traced arrays).
    """

    name: str = "family"

    def sample(self, key: jax.Array) -> PyTree:
        raise NotImplementedError

    def task(self, cfg: PyTree) -> Task:
        raise NotImplementedError

    def sample_task(self, key: jax.Array) -> Task:
        return self.task(self.sample(key))


def uniform(key, lo, hi):
    return jax.random.uniform(key, (), minval=lo, maxval=hi)


def log_uniform(key, lo, hi):
    return jnp.exp(uniform(key, jnp.log(lo), jnp.log(hi)))


def is_int(v) -> bool:
    """A Python/numpy integer that is not a bool (for validating user config values)."""
    return isinstance(v, (int, jnp.integer)) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite real number that is not a bool."""
    return (isinstance(v, (int, float, jnp.integer, jnp.floating)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def check_activations(prefix: str, activations, known, distinct: bool = False) -> tuple:
    """A name or list of names from ``known`` as a tuple (TaskError otherwise)."""
    if isinstance(activations, str):
        activations = (activations,)
    activations = tuple(activations) if isinstance(activations, (list, tuple)) else ()
    bad = [a for a in activations if not isinstance(a, str) or a not in known]
    if bad or not activations:
        raise TaskError(f"{prefix}: unknown activations {bad}; choose from {', '.join(known)}")
    if distinct and len(set(activations)) != len(activations):
        raise TaskError(f"{prefix}: activations must be distinct, got {activations!r}")
    return activations


def check_init_range(prefix: str, min_init_scale, max_init_scale) -> None:
    if not (is_number(min_init_scale) and is_number(max_init_scale)
            and 0 < min_init_scale <= max_init_scale):
        raise TaskError(f"{prefix}: need 0 < min_init_scale <= max_init_scale, got "
                        f"{min_init_scale!r}, {max_init_scale!r}")
