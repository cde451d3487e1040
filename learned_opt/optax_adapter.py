"""Use a (trained) learned optimizer as an ordinary optax transformation.

    tx = as_optax(lopt, theta)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, value=loss)
    params = optax.apply_updates(params, updates)      # == lopt's new params

``updates = new_params - params``, so ``apply_updates`` reproduces the learned
step (up to float rounding of the subtraction and re-addition).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree as PyTree

from learned_opt.base import LearnedOptError



class LearnedOptaxState(NamedTuple):
    """``opt_state``: the learned optimizer's own state; ``key``: raw PRNG key, split
    every step, or None when the optimizer does not use randomness."""

    opt_state: PyTree
    key: jax.Array | None


def as_optax(lopt, theta: PyTree, num_steps: int | None = None,
             seed: int = 0) -> optax.GradientTransformationExtraArgs:
    """Wrap ``lopt`` with meta-parameters ``theta``.

    ``update(grads, state, params, *, value=None, key=None, **extra)``: ``params`` is
    required; ``value`` is the loss at ``params`` (0 if not given); ``key``, if given,
    is used for this step instead of the key carried in the state (``seed`` seeds it).
    """
    needs_key = getattr(lopt, "needs_key", True)

    def init_fn(params):
        key = jax.random.PRNGKey(seed) if needs_key else None
        return LearnedOptaxState(lopt.opt_init(theta, params, num_steps), key)

    def update_fn(updates, state, params=None, *, value=None, key=None, **extra):
        del extra
        if params is None:
            raise LearnedOptError(
                "a learned optimizer needs the current parameters: "
                "call tx.update(grads, state, params, value=loss)")
        loss = jnp.zeros((), jnp.float32) if value is None else jnp.asarray(value)
        carry = state.key
        if needs_key:
            if key is None:
                carry, key = jax.random.split(state.key)
        elif key is None:
            key = jax.random.PRNGKey(0)  # unused by the optimizer
        new_params, opt_state = lopt.opt_update(theta, state.opt_state, updates, params, loss, key)
        deltas = jax.tree.map(lambda n, p: (n - p).astype(jnp.result_type(p)), new_params, params)
        return deltas, LearnedOptaxState(opt_state, carry)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
