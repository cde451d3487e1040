"""Apply a trained optimizer to a new task beside Adam: what ``lopt apply`` does, as a function.

    result = apply_to_task("rnn_mlp", "mnist1d_mlp_tanh", steps=1000, guard="trajectory", out="runs/x")

Both optimizers train the named task from the same initialisation on the same batches
(``tasks.training.train``); with ``guard`` the learned optimizer runs behind a guard with Adam
at ``adam_lr`` as the fallback: ``"step"`` (or ``True``) the per-step loss guard (LGL2O,
``learned_opt.loss_guard``), ``"trajectory"`` the trajectory guard
(``learned_opt.trajectory_guard``: Adam's own run alongside, checked every ``check_every`` steps
and at the last step). Writes ``curves.png`` (smoothed training losses) and ``curves.json`` (the
full curves and final numbers) into ``out`` when it is given.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax

import learned_opt
import tasks
from learned_opt.errors import LearnedOptError
from learned_opt.files import atomic_write_text
from learned_opt.loss_guard import guarded
from learned_opt.trajectory_guard import (DEFAULT_CHECK_EVERY, find_trajectory_guard_state,
                                          switch_rate, trajectory_guarded)
from meta_train.evaluation import curves as ev
from meta_train.evaluation.plots import plot_curves
from tasks import training

GUARDS = ("step", "trajectory")


def guard_kind(guard) -> str | None:
    """``False``/``None`` -> None, ``True`` -> ``"step"`` (the per-step loss guard, as before the
    trajectory guard existed), ``"step"``/``"trajectory"`` unchanged; anything else is an error."""
    if guard is None or guard is False:
        return None
    if guard is True:
        return "step"
    if guard in GUARDS:
        return guard
    raise LearnedOptError(f"unknown guard {guard!r}; choose one of {', '.join(GUARDS)} "
                          "(or False for none)")


def apply_to_task(checkpoint: str, task_name: str, steps: int = 1000, seed: int = 0,
                  adam_lr: float = 1e-3, guard: bool | str = False, out: str | None = None,
                  check_every: int = DEFAULT_CHECK_EVERY) -> dict:
    """Train ``task_name`` (see ``tasks.list_tasks``) for ``steps`` with the optimizer in
    ``checkpoint`` (a file or a shipped name) and with Adam(``adam_lr``). Returns
    ``{"task", "steps", "seed", "checkpoint", "learned": {...}, "adam": {...}}`` with each
    optimizer's final training loss (at the final parameters, over the whole training split:
    ``tasks.training.final_train_loss``), test loss and curve, and,
    with a guard, ``"guard"`` (its kind) and: for ``"step"`` (or ``True``) ``"fallback_rate"``
    (fraction of steps that kept Adam's proposal); for ``"trajectory"`` ``"switch_rate"``
    (fraction of checks that moved the run onto Adam's run), ``"switches"``, ``"checks"``,
    ``"last_switch_step"`` (0-based, -1 if none) and ``"check_every"``."""
    kind = guard_kind(guard)
    lopt, theta, _ = learned_opt.load(checkpoint)
    task = tasks.get_task(task_name)
    key = jax.random.PRNGKey(seed)
    extra = {}
    if kind == "step":
        lo, lo_test, rate, lo_fin, _ = jax.jit(lambda k: ev.run_task(
            task, guarded(lopt, theta, optax.adam(adam_lr), num_steps=steps), k, steps, guard=True))(key)
        extra = {"fallback_rate": float(rate)}
    elif kind == "trajectory":
        tx = trajectory_guarded(lopt, theta, optax.adam(adam_lr), check_every=check_every,
                                num_steps=steps, defer_last_check=ev.DEFER_LAST_CHECK)
        run = jax.jit(lambda k: training.train(task, tx, k, steps, guarded=True,
                                               finalize=ev.finalize_trajectory))(key)
        lo, lo_test, lo_fin = run.losses, run.test_loss, run.final_loss
        g = find_trajectory_guard_state(run.opt_state)
        extra = {"switch_rate": float(switch_rate(g)),
                 "switches": int(g.switches), "checks": int(g.checks),
                 "last_switch_step": int(g.last_switch_step), "check_every": check_every}
    else:
        lo, lo_test, _, lo_fin, _ = jax.jit(lambda k: ev.run_task(task, lopt.as_optax(theta, steps), k, steps))(key)
    ad, ad_test, _, ad_fin, _ = jax.jit(lambda k: ev.run_task(task, optax.adam(adam_lr), k, steps))(key)
    lo, ad = np.asarray(lo), np.asarray(ad)
    # final_train_loss: at the parameters the run returns (tasks.training.final_train_loss), so a
    # guard that ends on Adam's run reports Adam's loss, not the learned steps before the switch
    result = {"task": task_name, "steps": steps, "seed": seed, "checkpoint": checkpoint,
              "learned": {"final_train_loss": float(lo_fin), "test_loss": float(lo_test),
                          "curve": lo.tolist()},
              "adam": {"learning_rate": adam_lr, "final_train_loss": float(ad_fin),
                       "test_loss": float(ad_test), "curve": ad.tolist()}}
    if kind is not None:
        result.update({"guard": kind}, **extra)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        window = max(1, steps // 50)
        plot_curves({"learned": ev.smooth(lo, window), f"Adam lr={adam_lr:g}": ev.smooth(ad, window)},
                    os.path.join(out, "curves.png"), f"{task_name}: {steps} steps (seed {seed})")
        atomic_write_text(os.path.join(out, "curves.json"), json.dumps(result))
    return result


__all__ = ["GUARDS", "guard_kind", "apply_to_task"]
