"""Unrolls: truncatable inner computations that an outer estimator differentiates.

An Unroll is any dynamical system parameterised by theta:

    init(theta, key)        -> state          (start of an episode; ``init(theta, key, length)``
                                               when ``knows_length``: the episode's length T)
    step(theta, state, key) -> (state, loss)  (one inner step; loss is the meta-loss term)
    sample_episode_length(key) -> int32 scalar, a multiple of nothing in particular;
                                 None-like systems return a huge number.

Estimators only see this interface, so PES works for a learned optimizer on a
task family, a learning-rate schedule, or any user-defined system.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from chex import ArrayTree as PyTree

from learned_opt.errors import LearnedOptError
from learned_opt.loss_guard import loss_guard
from learned_opt.trajectory_guard import DEFAULT_CHECK_EVERY, trajectory_guard
from learned_opt.optax_adapter import as_optax
from tasks.training import train_step
NEVER_ENDING = 2**30


@dataclasses.dataclass(frozen=True)
class Unroll:
    """A user-defined unrolled computation (see module docstring).

    ``episode_length``: fixed int, a (min, max) pair sampled log-uniformly
    per episode, or None for a never-ending system. ``knows_length``: ``init`` takes the
    episode's length as a third argument (an int32 scalar; e.g. a learned optimizer conditioned
    on the fraction of training done). Estimators call :meth:`start`.
    """

    init: Callable[..., PyTree]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
    episode_length: int | tuple[int, int] | None = None
    knows_length: bool = False

    def start(self, theta: PyTree, key: jax.Array, length: jax.Array) -> PyTree:
        """The state at the start of an episode of ``length`` steps."""
        return self.init(theta, key, length) if self.knows_length else self.init(theta, key)

    def sample_episode_length(self, key: jax.Array) -> jax.Array:
        spec = self.episode_length
        if spec is None:
            return jnp.asarray(NEVER_ENDING, jnp.int32)
        if isinstance(spec, int):
            return jnp.asarray(spec, jnp.int32)
        lo, hi = spec
        u = jax.random.uniform(key, (), minval=jnp.log(lo), maxval=jnp.log(hi + 1))
        return jnp.clip(jnp.floor(jnp.exp(u)), lo, hi).astype(jnp.int32)


def normalised_loss(task, loss: jax.Array, max_loss: float = 10.0) -> jax.Array:
    """``task.normalizer(loss)`` clipped at ``max_loss`` (NaN stays NaN so estimators can mask
    it): the meta-loss term, and the metric of meta-training's periodic evaluation."""
    loss = task.normalizer(loss)
    return jnp.where(jnp.isnan(loss), loss, jnp.minimum(loss, max_loss))


class LOptState(NamedTuple):
    """Inner state of a learned optimizer training one task of a family."""

    cfg: PyTree        # the task's dynamic config (array pytree)
    params: PyTree     # the task's parameters
    opt_state: PyTree  # the learned optimizer's state (a guard's state when guarded)


def learned_optimizer_unroll(lopt, family, episode_length=(100, 1000),
                             max_meta_loss: float = 10.0, guard=None, log_loss: bool = False,
                             guard_kind: str = "step",
                             check_every: int = DEFAULT_CHECK_EVERY,
                             hide_length: float = 0.0) -> Unroll:
    """Training a learned optimizer on a task family, as an Unroll.

    Each episode samples a task cfg from ``family``, initialises its parameters,
    and each step is ``tasks.training.train_step`` (the one definition of an inner step: batch,
    loss key, guard batch) with the learned optimizer's update.
    The meta-loss term is the task's normalised training loss *before* the step (the
    batch's, or the exact expected loss of a task that has one: ``train_step``), clipped at
    ``max_meta_loss`` (NaN stays NaN so estimators can mask it). With
    ``log_loss`` it is ``log(max(normalised loss, 1e-6))`` instead: every halving of the loss
    counts the same, early or late in the episode, so late progress is not drowned out by the
    large early drops (the speedup metric at the end of training rewards exactly that).

    ``guard``: None, or an optax fallback transformation (e.g. ``optax.adam(1e-3)``). Then
    every inner step goes through a guard around ``learned_opt.as_optax(lopt, theta)`` with
    the loss on a separate guard batch as ``value_fn``, and ``LOptState.opt_state`` holds the
    guard's state. ``guard_kind="step"``: the per-step loss guard (``loss_guard``, two extra
    loss evaluations per step); ``"trajectory"``: the trajectory guard (``trajectory_guard``:
    the fallback's own run inside the state, its gradient from ``grad_fn``, checks every
    ``check_every`` steps of the episode; about 2x the step). Without a guard the steps are
    exactly those of ``lopt.opt_update`` (same keys and batches as before the guard existed).

    The optimizer's state starts with the episode's length as ``num_steps`` (``opt_init``; an
    architecture conditioned on the fraction of training done reads it), withheld (0, "unknown")
    in a random ``hide_length`` fraction of episodes so that the rule also learns to act without it.
    """
    if guard is not None and not (hasattr(guard, "init") and hasattr(guard, "update")):
        raise LearnedOptError(f"guard must be None or an optax transformation (the fallback), "
                              f"got {guard!r}")
    if guard_kind not in ("step", "trajectory"):
        raise LearnedOptError(f"guard_kind must be 'step' or 'trajectory', got {guard_kind!r}")

    def guard_tx(theta, num_steps=None):
        if guard_kind == "trajectory":
            return trajectory_guard(as_optax(lopt, theta, num_steps), guard, check_every=check_every)
        return loss_guard(as_optax(lopt, theta, num_steps), guard)

    def init(theta, key, length):
        k_cfg, k_init = jax.random.split(key)
        cfg = family.sample(k_cfg)
        task = family.task(cfg)
        params = task.init(k_init)
        if hide_length > 0:
            length = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 7), hide_length), 0, length)
        if guard is not None:
            return LOptState(cfg, params, guard_tx(theta, length).init(params))
        return LOptState(cfg, params, lopt.opt_init(theta, params, length))

    def update(theta):
        """One step's rule for ``tasks.training.train_step``: the learned optimizer's own
        ``opt_update``, or the guard around its optax form (key passed explicitly)."""
        if guard is None:
            return lambda g, s, p, loss, key, value_fn, grad_fn: lopt.opt_update(theta, s, g, p, loss, key)

        def guarded_update(g, s, p, loss, key, value_fn, grad_fn):
            # the per-step guard scores candidates with value_fn only; the trajectory guard
            # also takes its fallback run's gradient with grad_fn
            extra = {"grad_fn": grad_fn} if guard_kind == "trajectory" else {}
            updates, s = guard_tx(theta).update(g, s, p, value=loss, key=key, value_fn=value_fn,
                                                **extra)
            return optax.apply_updates(p, updates), s
        return guarded_update

    def step(theta, state, key):
        task = family.task(state.cfg)
        params, opt_state, loss = train_step(task, update(theta), state.params, state.opt_state, key,
                                             guarded=guard is not None)
        meta_loss = normalised_loss(task, loss, max_meta_loss)
        if log_loss:
            meta_loss = jnp.log(jnp.maximum(meta_loss, 1e-6))
        return LOptState(state.cfg, params, opt_state), meta_loss

    return Unroll(init=init, step=step, episode_length=episode_length, knows_length=True)
