"""Unrolls: truncatable inner computations that an outer estimator differentiates.

An Unroll is any dynamical system parameterised by theta:

    init(theta, key)        -> state          (start of an episode)
    step(theta, state, key) -> (state, loss)  (one inner step; loss is the meta-loss term)
    sample_episode_length(key) -> int32 scalar, a multiple of nothing in particular;
                                 None-like systems return a huge number.

Estimators only see this interface, so PES works for a learned optimizer on a
task family, a learning-rate schedule, or any user-defined system.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt.base import LearnedOptError
from learned_opt.loss_guard import loss_guard
from learned_opt.optax_adapter import as_optax

PyTree = Any
NEVER_ENDING = 2**30


@dataclasses.dataclass(frozen=True)
class Unroll:
    """A user-defined unrolled computation (see module docstring).

    ``episode_length``: fixed int, a (min, max) pair sampled log-uniformly
    per episode, or None for a never-ending system.
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
    episode_length: int | tuple[int, int] | None = None

    def sample_episode_length(self, key: jax.Array) -> jax.Array:
        spec = self.episode_length
        if spec is None:
            return jnp.asarray(NEVER_ENDING, jnp.int32)
        if isinstance(spec, int):
            return jnp.asarray(spec, jnp.int32)
        lo, hi = spec
        u = jax.random.uniform(key, (), minval=jnp.log(lo), maxval=jnp.log(hi + 1))
        return jnp.clip(jnp.floor(jnp.exp(u)), lo, hi).astype(jnp.int32)


class LOptState(NamedTuple):
    """Inner state of a learned optimizer training one task of a family."""

    cfg: PyTree        # the task's dynamic config (array pytree)
    params: PyTree     # the task's parameters
    opt_state: PyTree  # the learned optimizer's state (a LossGuardState when guarded)


def learned_optimizer_unroll(lopt, family, episode_length=(100, 1000),
                             max_meta_loss: float = 10.0, guard=None, log_loss: bool = False) -> Unroll:
    """Training a learned optimizer on a task family, as an Unroll.

    Each episode samples a task cfg from ``family``, initialises its parameters,
    and each step takes one learned-optimizer step on a fresh training batch.
    The meta-loss term is the task's normalised training loss *before* the step
    (clipped at ``max_meta_loss``; NaN stays NaN so estimators can mask it). With
    ``log_loss`` it is ``log(max(normalised loss, 1e-6))`` instead: every halving of the loss
    counts the same, early or late in the episode, so late progress is not drowned out by the
    large early drops (the speedup metric at the end of training rewards exactly that).

    ``guard``: None, or an optax fallback transformation (e.g. ``optax.adam(1e-3)``). Then
    every inner step applies ``loss_guard(learned_opt.as_optax(lopt, theta), guard)`` with
    the loss on a separate guard batch as ``value_fn`` (two extra loss evaluations per step),
    and ``LOptState.opt_state`` holds the ``LossGuardState``. Without a guard the steps are
    exactly those of ``lopt.opt_update`` (same keys and batches as before the guard existed).
    """
    if guard is not None and not (hasattr(guard, "init") and hasattr(guard, "update")):
        raise LearnedOptError(f"guard must be None or an optax transformation (the fallback), "
                              f"got {guard!r}")

    def guard_tx(theta):
        return loss_guard(as_optax(lopt, theta), guard)

    def init(theta, key):
        k_cfg, k_init = jax.random.split(key)
        cfg = family.sample(k_cfg)
        task = family.task(cfg)
        params = task.init(k_init)
        if guard is not None:
            return LOptState(cfg, params, guard_tx(theta).init(params))
        return LOptState(cfg, params, lopt.opt_init(theta, params))

    def step(theta, state, key):
        task = family.task(state.cfg)
        k_batch, k_loss, k_opt = jax.random.split(key, 3)
        batch = task.sample_batch(k_batch)
        loss, grads = jax.value_and_grad(task.loss)(state.params, k_loss, batch)
        if guard is not None:
            guard_batch = task.sample_batch(jax.random.fold_in(key, 1))
            updates, opt_state = guard_tx(theta).update(
                grads, state.opt_state, state.params, value=loss, key=k_opt,
                value_fn=lambda p: task.loss(p, k_loss, guard_batch))
            params = optax.apply_updates(state.params, updates)
        else:
            params, opt_state = lopt.opt_update(theta, state.opt_state, grads, state.params, loss, k_opt)
        meta_loss = task.normalizer(loss)
        meta_loss = jnp.where(jnp.isnan(meta_loss), meta_loss, jnp.minimum(meta_loss, max_meta_loss))
        if log_loss:
            meta_loss = jnp.log(jnp.maximum(meta_loss, 1e-6))
        return LOptState(state.cfg, params, opt_state), meta_loss

    return Unroll(init=init, step=step, episode_length=episode_length)
