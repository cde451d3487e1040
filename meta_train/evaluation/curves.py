"""Loss curves of any optax transformation on tasks, for reports and ``lopt apply``.

Every run is ``tasks.training.train`` (the one rollout meta-training's periodic evaluation uses
too); this module adds the loss guard's bookkeeping and the vmapped, jitted sweeps: one function
per (optimizer, family, horizon), vmapped over tasks (and over a hyper-parameter such as Adam's
learning rate), the steps a ``lax.scan``. A learned optimizer goes through ``as_optax``, so the
evaluation exercises the path a user's training loop does; with ``guard=True`` it runs behind a
guard and the guard's rate is reported: the fallback rate of the per-step loss guard
(``learned_opt.loss_guard``), or the switch rate of the trajectory guard
(``learned_opt.trajectory_guard``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_opt.errors import LearnedOptError
from learned_opt.loss_guard import fallback_rate, find_guard_state
from learned_opt.trajectory_guard import final_choice, find_trajectory_guard_state, switch_rate
from tasks import training

DEFAULT_ADAM_LR = 1e-3
# a trajectory guard here leaves its last check to final_choice on the final training loss
# (finalize_trajectory), not to the last guard batch (learned_opt.trajectory_guard)
DEFER_LAST_CHECK = True


class TaskCurves(NamedTuple):
    """What :func:`run_task` returns (with leading axes added by the vmapped sweeps)."""
    losses: Any       # (num_steps,) training loss at step t, on step t's batch, before the update
                      # (a task's exact expected loss instead where it has one: Task.expected_loss)
    test_loss: Any    # held-out loss at the final parameters
    rate: Any         # the guard's fallback / switch rate; NaN unguarded
    final_loss: Any   # training loss at the final parameters (tasks.training.final_train_loss)
    on_fallback: Any = None   # True when a trajectory guard returned its fallback run's final
                              # parameters (its last check switched); False otherwise


def finalize_trajectory(params, opt_state, decide):
    """``tasks.training.train``'s ``finalize`` for a guarded run: a trajectory guard's last check
    on the final training loss (``learned_opt.trajectory_guard.final_choice``); a run without a
    trajectory guard is returned as it is."""
    if find_trajectory_guard_state(opt_state) is None:
        return params, opt_state
    return final_choice(opt_state, params, decide)


def run_task(task, tx, key, num_steps, guard: bool = False) -> TaskCurves:
    """Train ``task`` with optax ``tx`` (``tasks.training.train``). Returns
    :class:`TaskCurves` (train losses (num_steps,), final test loss, guard rate, final training
    loss). The training loss at step t is measured on step t's batch before the update (or is the
    task's exact expected loss at those parameters, ``Task.expected_loss``, where it has one); the final
    training loss at the parameters the run returns (``tasks.training.final_train_loss``: the
    whole training split) (a guard that ends on its fallback's parameters has exactly the fallback's).

    ``guard=True``: ``tx`` contains a guard; each step also samples a separate guard batch and
    passes it as ``value_fn`` (and the training batch's ``grad_fn``). The rate is the per-step
    loss guard's fallback rate (``learned_opt.loss_guard``: the fraction of steps that kept the
    fallback's candidate) or the trajectory guard's switch rate
    (``learned_opt.trajectory_guard``: the fraction of its checks that moved the run onto the
    fallback run's parameters, counting its last check on more data: ``finalize_trajectory``).
    Unguarded runs return NaN for it. ``on_fallback`` is True when a trajectory guard's last
    check (the last step or the final choice) switched, so the run returns the fallback run's
    final parameters; False for every other run. Runs of different lengths
    from the same key share their first steps' batches."""
    run = training.train(task, tx, key, num_steps, guarded=guard,
                         finalize=finalize_trajectory if guard else None)
    if not guard:
        return TaskCurves(run.losses, run.test_loss, jnp.full((), jnp.nan, jnp.float32),
                          run.final_loss, jnp.zeros((), bool))
    step_guard = find_guard_state(run.opt_state)
    trajectory = find_trajectory_guard_state(run.opt_state)
    if (step_guard is None) == (trajectory is None):
        what = "both a loss guard and a trajectory guard" if step_guard is not None else "no guard"
        raise LearnedOptError(f"run_task(guard=True) needs a loss-guarded transformation with "
                              f"exactly one guard, this one has {what}: build it with "
                              "learned_opt.loss_guard.guarded(lopt, theta) / loss_guard(tx, fallback) "
                              "or learned_opt.trajectory_guard.trajectory_guarded(lopt, theta) / "
                              "trajectory_guard(tx, fallback)")
    if step_guard is not None:
        return TaskCurves(run.losses, run.test_loss, fallback_rate(step_guard), run.final_loss,
                          jnp.zeros((), bool))
    return TaskCurves(run.losses, run.test_loss, switch_rate(trajectory), run.final_loss,
                      ~trajectory.following_learned)


def family_curves(family, cfgs, keys, make_tx: Callable[[Any], optax.GradientTransformation],
                  hparams, num_steps: int, hparam_axis: int | None = None, guard: bool = False):
    """Curves for tasks ``family.task(cfgs[i])`` seeded by ``keys[i]``.

    With ``hparam_axis=0`` the leading axis of ``hparams`` is an extra vmapped axis
    (e.g. a learning-rate grid) and outputs have shape (num_hparams, num_tasks, ...).
    Returns :class:`TaskCurves` of numpy arrays; ``guard`` as in :func:`run_task` (the rates
    are NaN when unguarded). Every candidate runs at once: the benchmarks' tuning grids go
    through ``compare._grid_curves`` instead, which chunks a grid too large for memory.
    """
    def one(cfg, key, hp):
        return run_task(family.task(cfg), make_tx(hp), key, num_steps, guard=guard)

    over_tasks = jax.vmap(one, in_axes=(0, 0, None))
    fn = over_tasks if hparam_axis is None else jax.vmap(over_tasks, in_axes=(None, None, 0))
    return TaskCurves(*(np.asarray(x) for x in jax.jit(fn)(cfgs, keys, hparams)))


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along the last axis (same length; early steps use what exists)."""
    c = np.asarray(curve, dtype=float)
    cs = np.cumsum(np.nan_to_num(c, nan=np.inf), axis=-1)
    out = np.empty_like(c)
    n = c.shape[-1]
    for t in range(n):
        lo = max(0, t - window + 1)
        prev = cs[..., lo - 1] if lo > 0 else 0.0
        out[..., t] = (cs[..., t] - prev) / (t - lo + 1)
    return out


def final_loss(curve: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Mean training loss over the last ``frac`` of the run (non-finite counts as inf)."""
    c = np.asarray(curve, dtype=float)
    w = max(1, int(round(c.shape[-1] * frac)))
    tail = c[..., -w:]
    return np.where(np.all(np.isfinite(tail), axis=-1), tail.mean(axis=-1), np.inf)
