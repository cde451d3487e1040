"""Meta-training on the quadratic family lowers the held-out meta-loss."""
import jax
import numpy as np

from meta_train.config import get_config
from meta_train.trainer import MetaTrainer


def test_meta_training_lowers_quadratic_meta_loss():
    cfg = get_config("quadratic").replace(outer_steps=300, eval_tasks=8)
    tr = MetaTrainer(cfg)
    state = tr.init()
    before = float(tr.evaluate(state.theta)["eval_mean_loss"])
    step = tr.outer_step
    for _ in range(cfg.outer_steps):
        state, metrics = step(state)
    after = float(tr.evaluate(state.theta)["eval_mean_loss"])
    assert np.isfinite(after)
    print(f"quadratic meta-loss {before:.4f} -> {after:.4f}")
    # Measured here: 1.017 -> 0.837 (seed 0); we require a drop of at least 0.1.
    assert after < before - 0.1, (before, after)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.theta))

