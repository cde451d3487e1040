"""How a task is trained: the one definition of an inner training step and of a training run,
used by meta-training (``meta_train.unroll``: the Unroll's step), by its periodic evaluation
(``meta_train.trainer``) and by every report and ``lopt apply`` (``meta_train.evaluation``).

One step from the step's key ``k``:

    k_batch, k_loss, k_opt = split(k, 3)
    batch       = task.sample_batch(k_batch)
    loss, grads = value_and_grad(task.loss)(params, k_loss, batch)      # loss *before* the step
    guard batch = task.sample_batch(fold_in(k, 1))                      # only for a guard:
    value_fn(p) = task.loss(p, k_loss, guard batch)                     #   candidates scored here
    grad_fn(p)  = value_and_grad(task.loss)(p, k_loss, batch)           #   a fallback run's gradient
    params, opt_state = update(grads, opt_state, params, loss, k_opt, value_fn, grad_fn)
    recorded    = task.expected_loss(params before the step) if the task has one, else loss

A guarded step gives the guard both functions, so either kind works: the per-step loss guard
(``learned_opt.loss_guard``) uses ``value_fn`` and ignores ``grad_fn``; the trajectory guard
(``learned_opt.trajectory_guard``) also takes the fallback run's gradient at its own parameters
with ``grad_fn`` (same batch and loss key as the step's own gradient). Unguarded and
per-step-guarded steps compute exactly what they did before ``grad_fn`` existed (it is only
called by a trajectory guard).

A run of ``T`` steps from ``key``: ``k_init, k_run, k_eval = split(key, 3)``, parameters from
``task.init(k_init)``, step ``t`` keyed by ``fold_in(k_run, t)`` (so the first ``T`` steps of a
longer run are the ``T``-step run, batch for batch), a ``lax.scan`` over the steps recording each step's
loss (the step batch's loss before the update, or ``task.expected_loss`` at the same parameters
when the task has one: the synthetic quadratics, whose batch loss near the optimum is mostly the
batch's noise, so a curve of it, or a meta-loss, would score an optimizer by its luckiest
batches), the final
held-out loss (``task.eval_loss(params, "test")``, else the mean over 8 fresh batches) from
``k_eval``, and the final training loss at the final parameters: ``task.eval_loss(params,
"train")`` (the whole training split; for the synthetic families the expected loss) when the task
has ``eval_loss``, else the mean over the 8 training batches keyed ``split(fold_in(k_eval, 1),
8)``. Two runs that end on the same parameters have the same final loss, whatever their
trajectories. With ``finalize`` (a trajectory guard's last check, see
``learned_opt.trajectory_guard.final_choice``) the parameters after the last step are
``finalize(params, opt_state, final_train_loss)`` before those losses are taken: the choice is
made on the same loss the run reports.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import chex
import optax
from chex import ArrayTree

# update(grads, opt_state, params, loss, key, value_fn, grad_fn) -> (new_params, new_opt_state);
# value_fn and grad_fn are None unless the step is guarded.
UpdateFn = Callable[..., tuple[ArrayTree, ArrayTree]]


def optax_update(tx: optax.GradientTransformation) -> UpdateFn:
    """The :data:`UpdateFn` of an optax transformation (extra-args aware): the loss is passed as
    ``value=``, a guard's ``value_fn`` and ``grad_fn`` as ``value_fn=`` and ``grad_fn=``; ``key``
    is not passed (a learned optimizer's adapter carries its own)."""
    tx = optax.with_extra_args_support(tx)

    def update(grads, opt_state, params, loss, key, value_fn, grad_fn):
        del key
        extra = {} if value_fn is None else {"value_fn": value_fn}
        if grad_fn is not None:
            extra["grad_fn"] = grad_fn
        updates, opt_state = tx.update(grads, opt_state, params, value=loss, **extra)
        return optax.apply_updates(params, updates), opt_state

    return update


def guard_key(key: jax.Array) -> jax.Array:
    """The key of a step's guard batch (separate from its training batch)."""
    return jax.random.fold_in(key, 1)


def train_step(task, update: UpdateFn, params, opt_state, key: jax.Array, guarded: bool = False):
    """One training step of ``task`` (see the module docstring). Returns (params, opt_state,
    loss before the step): the batch's loss, or ``task.expected_loss(params)`` when the task has
    one (the optimizer is still given the batch's loss)."""
    k_batch, k_loss, k_opt = jax.random.split(key, 3)
    batch = task.sample_batch(k_batch)
    loss, grads = jax.value_and_grad(task.loss)(params, k_loss, batch)
    value_fn = grad_fn = None
    if guarded:
        guard_batch = task.sample_batch(guard_key(key))
        value_fn = lambda p: task.loss(p, k_loss, guard_batch)  # noqa: E731
        grad_fn = lambda p: jax.value_and_grad(task.loss)(p, k_loss, batch)  # noqa: E731
    new_params, opt_state = update(grads, opt_state, params, loss, k_opt, value_fn, grad_fn)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)   # at trace time
    if task.expected_loss is not None:
        loss = task.expected_loss(params)
    return new_params, opt_state, loss


def final_split_loss(task, params, key: jax.Array) -> jax.Array:
    """The held-out loss at the end of a run: the test split when the task has one, else the
    mean loss over 8 fresh batches."""
    if task.eval_loss is not None:
        return task.eval_loss(params, "test")
    keys = jax.random.split(key, 8)
    return jnp.mean(jax.vmap(lambda k: task.loss(params, k, task.sample_batch(k)))(keys))


def final_train_loss(task, params, key: jax.Array, num_batches: int = 8) -> jax.Array:
    """The training loss at ``params``: ``task.eval_loss(params, "train")`` when the task has
    ``eval_loss``, else the mean over ``num_batches`` training batches keyed
    ``split(fold_in(key, 1), num_batches)`` (``key`` is the run's ``k_eval``)."""
    if task.eval_loss is not None:
        return task.eval_loss(params, "train")
    keys = jax.random.split(jax.random.fold_in(key, 1), num_batches)
    return jnp.mean(jax.vmap(lambda k: task.loss(params, k, task.sample_batch(k)))(keys))


class Run(NamedTuple):
    """What :func:`train` returns."""
    losses: jax.Array      # (num_steps,) training loss at each step, before the update (the
                           # step batch's, or task.expected_loss at those parameters when set)
    test_loss: jax.Array   # final held-out loss (see final_split_loss)
    params: ArrayTree      # parameters after the last step
    opt_state: ArrayTree   # optimizer state after the last step
    final_loss: jax.Array  # training loss at the final parameters (see final_train_loss)


def train(task, tx: optax.GradientTransformation, key: jax.Array, num_steps: int,
          guarded: bool = False, finalize: Callable | None = None) -> Run:
    """Train ``task`` for ``num_steps`` with optax ``tx`` from ``key`` (see the module docstring).
    ``guarded``: ``tx`` is a guard (per-step ``loss_guard`` or ``trajectory_guard``) and every
    step passes it the guard batch's ``value_fn`` and the training batch's ``grad_fn``;
    ``finalize(params, opt_state, loss_fn) -> (params, opt_state)`` runs after the last step
    with ``loss_fn`` = :func:`final_train_loss` (see the module docstring)."""
    k_init, k_run, k_eval = jax.random.split(key, 3)
    params = task.init(k_init)
    opt_state = optax.with_extra_args_support(tx).init(params)
    update = optax_update(tx)

    def body(carry, t):
        params, opt_state = carry
        params, opt_state, loss = train_step(task, update, params, opt_state,
                                             jax.random.fold_in(k_run, t), guarded)
        return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(num_steps))
    if finalize is not None:
        params, opt_state = finalize(params, opt_state, lambda p: final_train_loss(task, p, k_eval))
    return Run(losses, final_split_loss(task, params, k_eval), params, opt_state,
               final_train_loss(task, params, k_eval))


__all__ = ["UpdateFn", "optax_update", "guard_key", "train_step", "final_split_loss", "final_train_loss", "Run", "train"]
