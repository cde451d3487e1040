"""Learned optimizers in JAX: architectures, features, optax adapter, checkpoint I/O.

    import learned_opt
    lopt = learned_opt.make("mlp")
    theta = lopt.init(jax.random.PRNGKey(0))
    tx = learned_opt.as_optax(lopt, theta)           # an optax transformation
    learned_opt.save("opt.npz", lopt, theta, {"outer_steps": 0})
    lopt, theta, meta = learned_opt.load("opt.npz")
    tx = learned_opt.load("mlp").as_optax()          # a shipped optimizer, by name
    learned_opt.shipped_names()                       # what checkpoints/ ships
"""
from learned_opt import dmd, features
from learned_opt.adafactor_lopt import AdafactorLOpt, AdafactorLOptConfig, AdafactorLOptState
from learned_opt.base import (CheckpointError, LearnedOptError, LearnedOptimizer,
                              architectures, config_from_dict, config_to_dict, make, register)
from learned_opt.baselines import DEFAULT_LEARNING_RATES, baseline_names, make_baseline
from learned_opt.hybrid_lopt import HybridLOpt, HybridLOptConfig, HybridLOptState
from learned_opt.lstm_lopt import LSTMLOpt, LSTMLOptConfig, LSTMLOptState, preprocess_gradient
from learned_opt.loss_guard import LossGuardState, fallback_rate, guarded, loss_guard
from learned_opt.checkpoint import Loaded, load, load_theta, read_header, save
from learned_opt.shipped import shipped_names
from learned_opt.mlp_lopt import MLPLOpt, MLPLOptConfig, MLPLOptState
from learned_opt.optax_adapter import LearnedOptaxState, as_optax

__all__ = [
    "CheckpointError", "LearnedOptError", "LearnedOptimizer", "architectures", "config_from_dict",
    "config_to_dict", "make", "register", "features", "dmd",
    "AdafactorLOpt", "AdafactorLOptConfig", "AdafactorLOptState",
    "HybridLOpt", "HybridLOptConfig", "HybridLOptState",
    "LossGuardState", "fallback_rate", "guarded", "loss_guard",
    "LSTMLOpt", "LSTMLOptConfig", "LSTMLOptState", "preprocess_gradient",
    "DEFAULT_LEARNING_RATES", "baseline_names", "make_baseline",
    "Loaded", "load", "load_theta", "read_header", "save", "shipped_names",
    "MLPLOpt", "MLPLOptConfig", "MLPLOptState",
    "LearnedOptaxState", "as_optax",
]
