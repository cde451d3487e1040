"""Per-parameter MLP learned optimizer ("LOLv2", Metz et al. 2019/2022).

For every parameter p of every tensor, with gradient g and momenta
``m_k <- d_k m_k + (1 - d_k) g`` (updated with the current g first):

    x      = [g, p, m_1..m_K]                       (K = len(decays), 8 by default)
    x_c   <- x_c * rsqrt(eps + mean_tensor(x_c^2))  (per tensor, per channel c)
    inputs = [x, tanh(t/s - 1) for s in time_scales] (8 + 11 = 19 by default)
    d, m   = MLP(inputs)                            (hidden_sizes, ReLU)
    p     <- p - step_mult * d * exp(exp_mult * m)

t is the number of updates already taken (0 at the first step). With
``dmd_window > 0`` the DMD features of the recent gradients (learned_opt.dmd,
``2 * dmd_rank + 2`` channels) are appended to the inputs. The MLP is
shared by all parameters and tensors; it is applied per tensor with
``jax.tree.map`` (one batched matmul per tensor). The output layer is
initialised with scale ``output_init_scale`` (weights ``N(0, s^2/fan_in)``,
zero bias), so an untrained optimizer's steps are about
``step_mult * output_init_scale`` per parameter: small and harmless.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from learned_opt import dmd
from learned_opt import features as F
from learned_opt.base import LearnedOptError, LearnedOptimizer, register
from learned_opt.nets import apply_mlp, init_mlp

PyTree = Any


class MLPLOptState(NamedTuple):
    """``momenta``: pytree like params, each leaf ``p.shape + (K,)`` float32 (one
    slot per decay, in config order); ``iteration``: int32 scalar, updates taken;
    ``dmd``: a ``dmd.DMDState`` when DMD features are on, else None."""

    momenta: PyTree
    iteration: jax.Array
    dmd: Any = None


@dataclasses.dataclass(frozen=True)
class MLPLOptConfig:
    hidden_sizes: tuple[int, ...] = (32, 32)
    decays: tuple[float, ...] = F.DEFAULT_DECAYS
    time_scales: tuple[float, ...] = F.TIME_SCALES
    step_mult: float = 0.001
    exp_mult: float = 0.001
    output_init_scale: float = 0.01   # scale of the output layer at init (small steps)
    norm_eps: float = 1e-5            # eps in x * rsqrt(eps + mean(x^2))
    dmd_window: int = 0               # gradient snapshots for DMD features (0 = off)
    dmd_rank: int = 3

    def __post_init__(self):
        if not self.hidden_sizes or any(int(h) != h or h < 1 for h in self.hidden_sizes):
            raise LearnedOptError(f"hidden_sizes must be positive ints, got {self.hidden_sizes}")
        if any(not 0.0 <= d < 1.0 for d in self.decays):
            raise LearnedOptError(f"decays must lie in [0, 1), got {self.decays}")
        if any(s <= 0 for s in self.time_scales):
            raise LearnedOptError(f"time_scales must be positive, got {self.time_scales}")
        if self.norm_eps <= 0:
            raise LearnedOptError(f"norm_eps must be positive, got {self.norm_eps}")
        dmd.validate(self.dmd_window, self.dmd_rank)

    @property
    def num_inputs(self) -> int:
        n_dmd = dmd.num_features(self.dmd_rank) if self.dmd_window else 0
        return 2 + len(self.decays) + len(self.time_scales) + n_dmd


def lolv2_features(momenta: PyTree, iteration: jax.Array, grads: PyTree, params: PyTree,
                   cfg: MLPLOptConfig) -> tuple[PyTree, PyTree]:
    """Return ``(inputs, new_momenta)``: per-tensor arrays ``p.shape + (num_inputs,)``
    (channels: g, p, momenta..., time features; see module docstring)."""
    decays = cfg.decays
    tfeat = F.time_features(iteration, cfg.time_scales)

    def one(m, g, p):
        g = g.astype(jnp.float32)
        m = F.update_momenta(m, g, decays)
        x = F.stack_channels(g, p.astype(jnp.float32), m)
        x = F.second_moment_normalize(x, cfg.norm_eps)
        return F.broadcast_global(x, tfeat), m

    out = jax.tree.map(one, momenta, grads, params)
    inputs = jax.tree.map(lambda _, o: o[0], params, out)
    new_m = jax.tree.map(lambda _, o: o[1], params, out)
    return inputs, new_m


@register
class MLPLOpt(LearnedOptimizer):
    """LOLv2 per-parameter MLP learned optimizer (architecture ``"mlp"``)."""

    architecture = "mlp"
    Config = MLPLOptConfig
    needs_key = False

    def init(self, key: jax.Array) -> dict:
        cfg = self.config
        sizes = (cfg.num_inputs, *cfg.hidden_sizes, 2)
        return {"mlp": init_mlp(key, sizes, cfg.output_init_scale)}

    def opt_init(self, theta, params, num_steps=None) -> MLPLOptState:
        k = len(self.config.decays)
        momenta = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p) + (k,), jnp.float32), params)
        dmd_state = dmd.init(params, self.config.dmd_window) if self.config.dmd_window else None
        return MLPLOptState(momenta, jnp.zeros((), jnp.int32), dmd_state)

    def features(self, state: MLPLOptState, grads, params) -> tuple[PyTree, PyTree]:
        """``(inputs, new_momenta)`` for this step; see :func:`lolv2_features`."""
        return lolv2_features(state.momenta, state.iteration, grads, params, self.config)

    def network(self, theta, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Apply the MLP to one tensor's inputs; returns ``(d, m)`` shaped like the tensor."""
        out = apply_mlp(theta["mlp"], inputs)
        return out[..., 0], out[..., 1]

    def step(self, theta, inputs: jax.Array) -> jax.Array:
        """``step_mult * d * exp(exp_mult * m)`` for one tensor (subtracted from p)."""
        d, m = self.network(theta, inputs)
        return self.config.step_mult * d * jnp.exp(self.config.exp_mult * m)

    def opt_update(self, theta, state, grads, params, loss=None, key=None):
        inputs, momenta = self.features(state, grads, params)
        dmd_state = state.dmd
        if self.config.dmd_window:
            dmd_state = dmd.push(state.dmd, grads)
            extra = dmd.features(dmd_state, self.config.dmd_rank)
            inputs = jax.tree.map(lambda x, f: jnp.concatenate([x, f], axis=-1), inputs, extra)
        new_params = jax.tree.map(
            lambda p, x: (p - self.step(theta, x)).astype(jnp.result_type(p)), params, inputs)
        return new_params, MLPLOptState(momenta, state.iteration + 1, dmd_state)
