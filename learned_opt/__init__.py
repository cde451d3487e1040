"""Learned optimizers in JAX: architectures, features, optax adapter, checkpoint I/O.

    import learned_opt
    lopt = learned_opt.make("mlp")
    theta = lopt.init(jax.random.PRNGKey(0))
    tx = learned_opt.as_optax(lopt, theta)           # an optax transformation
    tx = learned_opt.guarded(lopt, theta)            # behind the per-step loss guard (LGL2O)
    tx = learned_opt.trajectory_guarded(lopt, theta, num_steps=T)   # ... or the trajectory guard
    learned_opt.save("opt.npz", lopt, theta, {"outer_steps": 0})
    lopt, theta, meta = learned_opt.load("opt.npz")
    tx = learned_opt.load("mlp").as_optax()          # a shipped optimizer, by name
    learned_opt.shipped_names()                       # what checkpoints/ ships
    learned_opt.compile_cache.enable()                # reuse compiled programs across processes
"""
from learned_opt import compile_cache, dmd, features, mup
from learned_opt.adafactor_mlp import AdafactorMLP, AdafactorMLPConfig, AdafactorMLPState
from learned_opt.base import (CheckpointError, LearnedOptError, LearnedOptimizer, LOptConfig,
                              PerParameterMLP, architectures, config_from_dict, config_to_dict,
                              make, register)
from learned_opt.baselines import DEFAULT_LEARNING_RATES, baseline_names, make_baseline
from learned_opt.lstm import LSTM, LSTMConfig, LSTMState, preprocess_gradient
from learned_opt.loss_guard import LossGuardState, fallback_rate, guarded, loss_guard
from learned_opt.checkpoint import Loaded, load, load_theta, read_header, save
from learned_opt.shipped import shipped_names
from learned_opt.mlp import MLP, MLPConfig, MLPState
from learned_opt.norm_mlp import NormMLP, NormMLPConfig, NormMLPState
from learned_opt.optax_adapter import LearnedOptaxState, as_optax
from learned_opt.trajectory_guard import (TrajectoryGuardState, final_choice, find_trajectory_guard_state,
                                          smoothed_losses, switch_rate, trajectory_guard,
                                          trajectory_guarded)
from learned_opt.rnn_mlp import RNNMLP, RNNMLPConfig, RNNMLPState

__all__ = [
    "CheckpointError", "LearnedOptError", "LearnedOptimizer", "LOptConfig", "PerParameterMLP",
    "architectures", "config_from_dict",
    "config_to_dict", "make", "register", "features", "dmd", "compile_cache",
    "AdafactorMLP", "AdafactorMLPConfig", "AdafactorMLPState",
    "RNNMLP", "RNNMLPConfig", "RNNMLPState",
    "LossGuardState", "fallback_rate", "guarded", "loss_guard",
    "TrajectoryGuardState", "final_choice", "find_trajectory_guard_state", "smoothed_losses", "switch_rate",
    "trajectory_guard", "trajectory_guarded",
    "LSTM", "LSTMConfig", "LSTMState", "preprocess_gradient",
    "DEFAULT_LEARNING_RATES", "baseline_names", "make_baseline",
    "Loaded", "load", "load_theta", "read_header", "save", "shipped_names",
    "MLP", "MLPConfig", "MLPState", "NormMLP", "NormMLPConfig", "NormMLPState", "mup",
    "LearnedOptaxState", "as_optax",
]
