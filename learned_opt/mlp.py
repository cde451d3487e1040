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
``jax.tree.map`` (one batched matmul per tensor). The time features are the same for every
parameter, so the first layer computes ``x_rest W_rest + (tfeat W_time + b)``: their product is
taken once per tensor (``constant_channels``, ``nets.apply_mlp``), not once per parameter. The output layer is
initialised with scale ``output_init_scale`` (weights ``N(0, s^2/fan_in)``,
zero bias), so an untrained optimizer's steps are about
``step_mult * output_init_scale`` per parameter: small and harmless.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
from chex import Array, ArrayTree as PyTree

from learned_opt import features as F
from learned_opt.base import LOptConfig, PerParameterMLP, register
from learned_opt.checks import are_ints
from learned_opt.dmd import DMDState
from learned_opt.nets import init_step_mlp


class MLPState(NamedTuple):
    """``momenta``: pytree like params, each leaf ``p.shape + (K,)`` float32 (one
    slot per decay, in config order); ``iteration``: int32 scalar, updates taken;
    ``dmd``: a ``dmd.DMDState`` when DMD features are on, else None."""

    momenta: PyTree
    iteration: Array
    dmd: DMDState | None = None


@dataclasses.dataclass(frozen=True)
class MLPConfig(LOptConfig):
    hidden_sizes: tuple[int, ...] = (32, 32)
    decays: tuple[float, ...] = F.DEFAULT_DECAYS
    time_scales: tuple[float, ...] = F.TIME_SCALES
    step_mult: float = 0.001
    exp_mult: float = 0.001
    output_init_scale: float = 0.01   # scale of the output layer at init (small steps)
    norm_eps: float = 1e-5            # eps in x * rsqrt(eps + mean(x^2))
    dmd_window: int = 0               # gradient snapshots for DMD features (0 = off)
    dmd_rank: int = 3

    def checks(self):
        yield "hidden_sizes", are_ints(self.hidden_sizes), "a non-empty tuple of positive ints"
        yield "decays", all(0.0 <= d < 1.0 for d in self.decays), "values in [0, 1)"
        yield "time_scales", all(s > 0 for s in self.time_scales), "positive"
        yield "norm_eps", self.norm_eps > 0, "positive"
        yield from super().checks()

    @property
    def num_inputs(self) -> int:
        return 2 + len(self.decays) + len(self.time_scales) + self.num_dmd_inputs


@register
class MLP(PerParameterMLP):
    """LOLv2 per-parameter MLP learned optimizer (architecture ``"mlp"``)."""

    architecture = "mlp"
    Config = MLPConfig
    State = MLPState
    needs_key = False

    def init(self, key: jax.Array) -> dict:
        cfg = self.config
        return {"mlp": init_step_mlp(key, cfg.num_inputs, cfg.hidden_sizes, cfg.output_init_scale)}

    def constant_channels(self) -> tuple[int, int]:
        """The time features (the same for every parameter)."""
        return F.lolv2_time_channels(self.config.decays, self.config.time_scales)

    def init_slots(self, theta, params) -> dict:
        k = len(self.config.decays)
        return {"momenta": jax.tree.map(lambda p: F.init_accumulators(p, k), params)}

    def features(self, theta, state: MLPState, grads, params, loss) -> tuple[PyTree, MLPState]:
        """``(inputs, new_state)``: the LOLv2 inputs (``F.lolv2_inputs``, leaves
        ``p.shape + (num_inputs without DMD,)``) and the state with updated momenta."""
        cfg = self.config
        inputs, momenta = F.lolv2_inputs(state.momenta, state.iteration, grads, params,
                                         cfg.decays, cfg.time_scales, cfg.norm_eps)
        return inputs, self.advance(state, momenta=momenta)


__all__ = ["MLP", "MLPConfig", "MLPState"]
