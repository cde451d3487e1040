"""Apply a trained optimizer to a new task beside Adam: what ``lopt apply`` does, as a function.

    result = apply_to_task("rnn_mlp", "mnist1d_mlp_tanh", steps=1000, guard=True, out="runs/x")

Both optimizers train the named task from the same initialisation on the same batches
(``tasks.training.train``); with ``guard`` the learned optimizer runs behind the loss guard with
Adam at ``adam_lr`` as the fallback. Writes ``curves.png`` (smoothed training losses) and
``curves.json`` (the full curves and final numbers) into ``out`` when it is given.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax

import learned_opt
import tasks
from learned_opt.files import atomic_write_text
from learned_opt.loss_guard import guarded
from meta_train.evaluation import curves as ev
from meta_train.evaluation.plots import plot_curves


def apply_to_task(checkpoint: str, task_name: str, steps: int = 1000, seed: int = 0,
                  adam_lr: float = 1e-3, guard: bool = False, out: str | None = None) -> dict:
    """Train ``task_name`` (see ``tasks.list_tasks``) for ``steps`` with the optimizer in
    ``checkpoint`` (a file or a shipped name) and with Adam(``adam_lr``). Returns
    ``{"task", "steps", "seed", "checkpoint", "learned": {...}, "adam": {...}}`` with each
    optimizer's final training loss (mean over the last 5% of steps), test loss and curve, and,
    with ``guard``, ``"fallback_rate"`` (fraction of steps that kept Adam's proposal)."""
    lopt, theta, _ = learned_opt.load(checkpoint)
    task = tasks.get_task(task_name)
    key = jax.random.PRNGKey(seed)
    if guard:
        lo, lo_test, rate = jax.jit(lambda k: ev.run_task(
            task, guarded(lopt, theta, optax.adam(adam_lr)), k, steps, guard=True))(key)
    else:
        lo, lo_test, rate = jax.jit(lambda k: ev.run_task(task, lopt.as_optax(theta), k, steps))(key)
    ad, ad_test, _ = jax.jit(lambda k: ev.run_task(task, optax.adam(adam_lr), k, steps))(key)
    lo, ad = np.asarray(lo), np.asarray(ad)
    result = {"task": task_name, "steps": steps, "seed": seed, "checkpoint": checkpoint,
              "learned": {"final_train_loss": float(ev.final_loss(lo)), "test_loss": float(lo_test),
                          "curve": lo.tolist()},
              "adam": {"learning_rate": adam_lr, "final_train_loss": float(ev.final_loss(ad)),
                       "test_loss": float(ad_test), "curve": ad.tolist()}}
    if guard:
        result["fallback_rate"] = float(rate)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        window = max(1, steps // 50)
        plot_curves({"learned": ev.smooth(lo, window), f"Adam lr={adam_lr:g}": ev.smooth(ad, window)},
                    os.path.join(out, "curves.png"), f"{task_name}: {steps} steps (seed {seed})")
        atomic_write_text(os.path.join(out, "curves.json"), json.dumps(result))
    return result


__all__ = ["apply_to_task"]
