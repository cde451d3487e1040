"""Loss-guarded fallback for learned optimizers (LGL2O, Premont-Schwarz, Vitku, Feyereisl, ICML 2022).

At every step both optimizers propose a candidate from the *same* parameters x and gradients g:

    u_L, s_L <- candidate.update(g, s_L, x)      x_L = x + u_L    (learned optimizer)
    u_A, s_A <- fallback.update(g, s_A, x)       x_A = x + u_A    (e.g. Adam, SGD)
    l_L = f(x_L),  l_A = f(x_A)                  f = value_fn: loss on one guard batch
    x  <- x_L  if l_L <= l_A  else x_A

so the loss (on the guard batch) after a step is never above the fallback's candidate:
``accepted = min(l_L, l_A)``. Both states advance every step, whichever candidate is kept
(the fallback's moments therefore always describe the actual trajectory, as in the paper).
A non-finite l_L (or a non-finite entry in u_L) always falls back; a non-finite l_A with a
finite l_L keeps the learned candidate. No hysteresis.

Cost per step: one extra update of the fallback and **two extra loss evaluations** (forward
passes only, no extra gradient) on the guard batch. ``value_fn`` closes over that batch, like
the ``value_fn`` of optax's line searches:

    tx = loss_guard(learned_opt.as_optax(lopt, theta), optax.adam(1e-3))   # or guarded(lopt, theta)
    state = tx.init(params)
    loss, grads = jax.value_and_grad(f)(params, batch)
    updates, state = tx.update(grads, state, params, value=loss,
                               value_fn=lambda p: f(p, guard_batch))
    params = optax.apply_updates(params, updates)
    fallback_rate(state)        # fraction of steps that kept the fallback's candidate

Everything is selected with ``jnp.where`` per leaf: jit-able and vmappable (no Python
branching on values).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree as PyTree

from learned_opt.base import LearnedOptError
from learned_opt.optax_adapter import as_optax



class LossGuardState(NamedTuple):
    """``candidate``/``fallback``: the two optimizers' states (both advanced every step);
    ``steps``: int32 steps taken; ``fallbacks``: int32 steps that kept the fallback's
    candidate; ``last_loss``: float32 guard-batch loss of the accepted candidate at the last
    step (NaN before the first step); ``used_fallback``: bool, whether the last step did."""

    candidate: PyTree
    fallback: PyTree
    steps: jax.Array
    fallbacks: jax.Array
    last_loss: jax.Array
    used_fallback: jax.Array


def all_finite(tree) -> jax.Array:
    """True when every inexact leaf of ``tree`` is finite (jit-able)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def loss_guard(candidate: optax.GradientTransformation,
               fallback: optax.GradientTransformation | None = None
               ) -> optax.GradientTransformationExtraArgs:
    """Guard ``candidate`` (any optax transformation, e.g. ``learned_opt.as_optax(lopt, theta)``)
    with ``fallback`` (default ``optax.adam(1e-3)``); see the module docstring.

    ``update(grads, state, params, *, value_fn, value=None, **extra)``: ``value_fn(p)`` is the
    scalar loss at parameters ``p`` on the guard batch (required); ``value`` (the loss at
    ``params``) and any other extra arguments are passed on to both optimizers (a plain
    optax transformation ignores them). Costs two extra ``value_fn`` calls per step.
    """
    if fallback is None:
        fallback = optax.adam(1e-3)
    for name, tx in (("candidate", candidate), ("fallback", fallback)):
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise LearnedOptError(f"loss_guard: {name} must be an optax transformation, got {tx!r}")
    cand = optax.with_extra_args_support(candidate)
    fb = optax.with_extra_args_support(fallback)

    def init_fn(params):
        return LossGuardState(cand.init(params), fb.init(params), jnp.zeros((), jnp.int32),
                              jnp.zeros((), jnp.int32), jnp.full((), jnp.nan, jnp.float32),
                              jnp.zeros((), bool))

    def update_fn(updates, state, params=None, *, value_fn: Callable | None = None,
                  value=None, **extra):
        if value_fn is None:
            raise LearnedOptError(
                "the loss guard needs value_fn, the loss on a guard batch as a function of the "
                "parameters: call tx.update(grads, state, params, value=loss, "
                "value_fn=lambda p: loss_fn(p, guard_batch))")
        if params is None:
            raise LearnedOptError(
                "the loss guard needs the current parameters: "
                "call tx.update(grads, state, params, value_fn=...)")
        if value is not None:
            extra = dict(extra, value=value)
        u_l, s_l = cand.update(updates, state.candidate, params, **extra)
        u_a, s_a = fb.update(updates, state.fallback, params, **extra)
        l_l = jnp.asarray(value_fn(optax.apply_updates(params, u_l)), jnp.float32)
        l_a = jnp.asarray(value_fn(optax.apply_updates(params, u_a)), jnp.float32)
        ok_l = jnp.isfinite(l_l) & all_finite(u_l)
        keep = ok_l & ((l_l <= l_a) | ~jnp.isfinite(l_a))
        new_updates = jax.tree.map(
            lambda a, b: jnp.where(keep, a, b.astype(jnp.result_type(a))), u_l, u_a)
        used_fb = ~keep
        new_state = LossGuardState(s_l, s_a, state.steps + 1,
                                   state.fallbacks + used_fb.astype(jnp.int32),
                                   jnp.where(keep, l_l, l_a), used_fb)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_state(state: PyTree, cls: type, what: str, reader: str):
    """The ``cls`` state inside an optax state (itself, or nested e.g. in ``optax.chain``'s
    tuple); None if there is none. Raises if there are several (``what``: its name in the
    message, ``reader``: the function the caller should pass the right one to)."""
    found = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls))
             if isinstance(x, cls)]
    if len(found) > 1:
        raise LearnedOptError(f"found {len(found)} {what} states in one optax state; "
                              f"pass the one you mean to {reader}")
    return found[0] if found else None


def find_guard_state(state: PyTree) -> LossGuardState | None:
    """The ``LossGuardState`` inside an optax state (itself, or nested e.g. in
    ``optax.chain``'s tuple); None if there is none. Raises if there are several."""
    return find_state(state, LossGuardState, "loss-guard", "fallback_rate")


def fallback_rate(state: PyTree) -> jax.Array:
    """Fraction of the steps so far that kept the fallback's candidate, ``fallbacks /
    max(steps, 1)`` (0 before any step). ``state`` is a ``LossGuardState`` or an optax state
    that contains one."""
    g = find_guard_state(state)
    if g is None:
        raise LearnedOptError("fallback_rate needs the state of a loss guard "
                              "(built with loss_guard(...) or guarded(...))")
    return g.fallbacks.astype(jnp.float32) / jnp.maximum(g.steps, 1).astype(jnp.float32)


def guarded(lopt, theta: PyTree, fallback: optax.GradientTransformation | None = None,
            num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
    """``loss_guard(as_optax(lopt, theta, num_steps), fallback)``: a learned optimizer that
    falls back to ``fallback`` (default Adam 1e-3) whenever that gives a lower guard loss."""
    return loss_guard(as_optax(lopt, theta, num_steps), fallback)


__all__ = ["LossGuardState", "loss_guard", "fallback_rate", "find_guard_state", "find_state", "all_finite",
           "guarded"]
