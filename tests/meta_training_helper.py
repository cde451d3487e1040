"""Shared by the per-architecture tests: meta-train on the quadratic family and return the
held-out meta-loss before and after (``get_config("quadratic")``, 8 eval tasks, seed 0)."""
import jax
import numpy as np

from meta_train.config import get_config
from meta_train.trainer import MetaTrainer


def quadratic_meta_training(architecture: str, outer_steps: int, lopt_config: dict | None = None):
    """Returns ``(before, after, final TrainState)``; asserts theta stays finite."""
    cfg = get_config("quadratic").replace(architecture=architecture, lopt_config=lopt_config or {},
                                          outer_steps=outer_steps, eval_tasks=8)
    tr = MetaTrainer(cfg)
    state = tr.init()
    before = float(tr.evaluate(state.theta)["eval_mean_loss"])
    for _ in range(cfg.outer_steps):
        state, _ = tr.outer_step(state)
    after = float(tr.evaluate(state.theta)["eval_mean_loss"])
    print(f"{architecture} quadratic meta-loss {before:.4f} -> {after:.4f}")
    assert np.isfinite(after), (before, after)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.theta))
    return before, after, state
