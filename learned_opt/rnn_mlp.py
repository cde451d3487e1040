"""Per-tensor LSTM + per-parameter MLP hybrid learned optimizer (RNN-MLP, VeLO style).

Architecture name ``"rnn_mlp"``. Two branches share one step:

**Per-tensor branch (one LSTM, shared weights, one hidden state per tensor).**
Tensors are the leaves of the params pytree in ``jax.tree.leaves`` order, j = 1..T.
With the momenta already updated by this step's gradient (``m_k <- d_k m_k + (1-d_k) g``),
``n`` the number of elements, ``eps = stat_eps`` (1e-8), ``a = stat_scale`` (0.1) and
means taken over the tensor's elements (``sum / max(n, 1)``, so empty tensors are finite),
the statistics vector of tensor j is (``num_stats = K + 8 + 2 + len(time_scales)``, 27 by default)

    a * log(eps + mean|m_k|)              k = 1..K          (K = len(decays))
    a * 0.5 * log(eps^2 + mean(g^2))      log RMS of the gradient
    a * 0.5 * log(eps^2 + mean(p^2))      log RMS of the parameters
    a * 0.5 * log(eps^2 + sum(g^2))       log gradient norm
    a * log(max(n, 1))                    log number of elements
    [ndim == 0, ndim == 1, ndim == 2, ndim >= 3]             (one-hot, not scaled)
    a * clip(l_t - l_0,      -loss_clip, loss_clip)          loss relative to the first step
    a * clip(l_t - e_{t-1},  -loss_clip, loss_clip)          loss relative to its EMA
    tanh(t / s - 1)  for s in time_scales                    (not scaled)

All logs use eps, so zero tensors give finite values; the 0.5*log(eps^2 + x) form keeps
gradients finite at x = 0. The loss statistics are the same for every tensor:
``l_t = log(max(loss_t, eps))`` (losses are assumed non-negative; a caller that passes
0 every step gets zeros), ``l_0`` is ``l_t`` at the first step (iteration 0), and the EMA
of the log loss is ``e_{-1} := l_0``, ``e_t = beta e_{t-1} + (1 - beta) l_t`` with
``beta = loss_ema_decay``; the state stores ``(l_0, e_t)``.

All tensors go through ONE batched LSTM call on ``S`` (T x num_stats). Cross-tensor
averaging: the LSTM input of tensor j at step t is ``x_j = [S_j, hbar_{t-1}]`` where
``hbar_{t-1} = (1/T) sum_i h_{t-1,i}`` is the mean over all tensors of the previous
step's LSTM hidden outputs (zero at the first step). With ``H = lstm_hidden``:

    z     = x_j W_x + h_{t-1,j} W_h + b             (4H: gates i, f, g, o in that order)
    c_j   = sigmoid(z_f) * c_{t-1,j} + sigmoid(z_i) * tanh(z_g)
    h_j   = sigmoid(z_o) * tanh(c_j)
    ctx_j = h_j W_c + b_c                           (context, context_dim)
    s_j   = exp(lr_mult * (h_j w_s + b_s))          (per-tensor step-size multiplier)

``b`` starts with ``forget_bias`` (1.0) on the forget slice; ``w_s, b_s`` start at 0
(``lr_init_scale = 0``), so an untrained optimizer has ``s_j = 1`` exactly.

**Per-parameter branch.** The LOLv2 inputs of ``features.lolv2_inputs`` (g, p and the
K momenta normalised per tensor by ``x * rsqrt(norm_eps + mean(x^2))``, then the 11 time
features: 19 channels), then the tensor's context ``ctx_j`` broadcast to each of its
parameters, then (``dmd_window > 0``) the ``learned_opt.dmd`` features
(``2 * dmd_rank + 2`` channels): ``num_inputs = 19 + context_dim (+ DMD)`` (27 by default).

    d, m = MLP(inputs)                         (hidden_sizes (32, 32), ReLU, 2 outputs)
    p   <- p - step_mult * s_j * d * exp(exp_mult * m)

The time features and ``ctx_j`` are the same for every parameter of tensor j, so their product
with the MLP's first layer is computed once per tensor, as a bias (``constant_channels``,
``nets.apply_mlp``): only the 8 LOLv2 channels (and DMD's) are multiplied per parameter.

The MLP's output layer is initialised with scale ``output_init_scale`` (0.01), so an
untrained optimizer's steps are about ``step_mult * output_init_scale`` per parameter.

theta = ``{"lstm": {"wx" (num_stats + H, 4H), "wh" (H, 4H), "b" (4H,)},
"context_head": {"w" (H, C), "b" (C,)}, "lr_head": {"w" (H, 1), "b" (1,)},
"mlp": {"linear_0": ..., ...}}``. The optimizer uses no randomness. In the shared step of
``learned_opt.base``, ``features`` runs the per-tensor branch (its LSTM state is part of the
feature state) and returns the per-parameter inputs with the context appended; ``s_j`` is the
per-tensor step multiplier (``step_scales``) of the LOLv2 step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from chex import Array, ArrayTree as PyTree

from learned_opt import features as F
from learned_opt.base import LOptConfig, PerParameterMLP, register
from learned_opt.checks import are_ints, is_int
from learned_opt.dmd import DMDState
from learned_opt.nets import apply_linear, apply_lstm_cell, init_linear, init_lstm, init_step_mlp

NUM_NDIM_SLOTS = 4   # one-hot [ndim == 0, 1, 2, >= 3]


class TensorLSTMState(NamedTuple):
    """Hidden and cell states, one row per tensor: ``h``, ``c`` float32 ``(T, lstm_hidden)``."""

    h: Array
    c: Array


class LossStats(NamedTuple):
    """``log_loss0``: l_0, the log loss at the first step; ``log_loss_ema``: e_t, the EMA
    of the log loss including the latest step (float32 scalars, 0 before the first step)."""

    log_loss0: Array
    log_loss_ema: Array


class RNNMLPState(NamedTuple):
    """``momenta``: like params, leaves ``p.shape + (K,)``; ``iteration``: int32 updates taken;
    ``lstm_state``: :class:`TensorLSTMState`; ``loss_stats``: :class:`LossStats`;
    ``dmd``: a ``dmd.DMDState`` when DMD features are on, else None."""

    momenta: PyTree
    iteration: Array
    lstm_state: TensorLSTMState
    loss_stats: LossStats
    dmd: DMDState | None = None


@dataclasses.dataclass(frozen=True)
class RNNMLPConfig(LOptConfig):
    hidden_sizes: tuple[int, ...] = (32, 32)   # per-parameter MLP
    lstm_hidden: int = 32
    context_dim: int = 8
    decays: tuple[float, ...] = F.DEFAULT_DECAYS
    time_scales: tuple[float, ...] = F.TIME_SCALES
    step_mult: float = 0.001
    exp_mult: float = 0.001
    lr_mult: float = 1.0              # s_j = exp(lr_mult * lr head output)
    output_init_scale: float = 0.01   # MLP output layer scale at init (small steps)
    context_init_scale: float = 1.0   # context head weights ~ N(0, scale^2 / H)
    lr_init_scale: float = 0.0        # lr head weights ~ N(0, scale^2 / H); 0 -> s_j = 1
    forget_bias: float = 1.0
    loss_ema_decay: float = 0.9
    loss_clip: float = 10.0
    stat_eps: float = 1e-8
    stat_scale: float = 0.1           # multiplies the log-valued tensor statistics
    norm_eps: float = 1e-5            # per-tensor normalisation of the LOLv2 inputs
    dmd_window: int = 0               # gradient snapshots for DMD features (0 = off)
    dmd_rank: int = 3

    def checks(self):
        yield "hidden_sizes", are_ints(self.hidden_sizes), "a non-empty tuple of positive ints"
        yield "lstm_hidden", is_int(self.lstm_hidden), "a positive int"
        yield "context_dim", is_int(self.context_dim), "a positive int"
        yield "decays", all(0.0 <= d < 1.0 for d in self.decays), "values in [0, 1)"
        yield "time_scales", all(s > 0 for s in self.time_scales), "positive"
        yield "loss_ema_decay", 0.0 <= self.loss_ema_decay < 1.0, "in [0, 1)"
        for name in ("loss_clip", "stat_eps", "stat_scale", "norm_eps"):
            yield name, getattr(self, name) > 0, "positive"
        for name in ("output_init_scale", "context_init_scale", "lr_init_scale"):
            yield name, getattr(self, name) >= 0, ">= 0"
        yield from super().checks()

    @property
    def num_stats(self) -> int:
        """Width of a tensor's statistics vector (see module docstring)."""
        return len(self.decays) + 4 + NUM_NDIM_SLOTS + 2 + len(self.time_scales)

    @property
    def num_lstm_inputs(self) -> int:
        return self.num_stats + self.lstm_hidden

    @property
    def num_inputs(self) -> int:
        """Width of the per-parameter MLP input."""
        return 2 + len(self.decays) + len(self.time_scales) + self.context_dim + self.num_dmd_inputs


# ------------------------------------------------------------------ tensor statistics
def tensor_statistics(g: jax.Array, p: jax.Array, m: jax.Array, cfg: RNNMLPConfig) -> jax.Array:
    """The loss- and time-independent part of one tensor's statistics: ``(K + 8,)`` float32.

    ``m`` are the already-updated momenta ``g.shape + (K,)``; see the module docstring.
    """
    g = jnp.asarray(g, jnp.float32)
    p = jnp.asarray(p, jnp.float32)
    n = int(math.prod(g.shape))
    inv_n = 1.0 / max(n, 1)
    axes = tuple(range(g.ndim))
    eps, a = cfg.stat_eps, cfg.stat_scale
    mean_abs_m = jnp.sum(jnp.abs(m.astype(jnp.float32)), axis=axes) * inv_n
    sum_g2 = jnp.sum(jnp.square(g))
    sum_p2 = jnp.sum(jnp.square(p))
    logs = jnp.concatenate([
        jnp.log(eps + mean_abs_m),
        jnp.stack([0.5 * jnp.log(eps**2 + sum_g2 * inv_n),
                   0.5 * jnp.log(eps**2 + sum_p2 * inv_n),
                   0.5 * jnp.log(eps**2 + sum_g2),
                   jnp.asarray(math.log(max(n, 1)), jnp.float32)])])
    onehot = jnp.asarray([g.ndim == 0, g.ndim == 1, g.ndim == 2, g.ndim >= 3], jnp.float32)
    return jnp.concatenate([a * logs, onehot])


def loss_statistics(loss: jax.Array, iteration: jax.Array, stats: LossStats,
                    cfg: RNNMLPConfig) -> tuple[jax.Array, LossStats]:
    """``(features (2,), new LossStats)``: scaled, clipped ``l_t - l_0`` and ``l_t - e_{t-1}``."""
    ell = jnp.log(jnp.maximum(jnp.asarray(loss, jnp.float32), cfg.stat_eps))
    first = iteration == 0
    l0 = jnp.where(first, ell, stats.log_loss0)
    ema_prev = jnp.where(first, ell, stats.log_loss_ema)
    c = cfg.loss_clip
    feats = cfg.stat_scale * jnp.stack([jnp.clip(ell - l0, -c, c), jnp.clip(ell - ema_prev, -c, c)])
    beta = cfg.loss_ema_decay
    new_ema = beta * ema_prev + (1.0 - beta) * ell
    return feats, LossStats(l0, new_ema)


# ------------------------------------------------------------------ the optimizer
@functools.partial(jax.jit, static_argnums=0)   # one compiled call, not many eager ops
def _init_theta(cfg: RNNMLPConfig, key: jax.Array) -> dict:
    k_lstm, k_ctx, k_lr, k_mlp = jax.random.split(key, 4)
    H = cfg.lstm_hidden
    return {
        "lstm": init_lstm(k_lstm, cfg.num_lstm_inputs, H, cfg.forget_bias),
        "context_head": init_linear(k_ctx, H, cfg.context_dim, cfg.context_init_scale),
        "lr_head": init_linear(k_lr, H, 1, cfg.lr_init_scale),
        "mlp": init_step_mlp(k_mlp, cfg.num_inputs, cfg.hidden_sizes, cfg.output_init_scale),
    }


@register
class RNNMLP(PerParameterMLP):
    """Per-tensor LSTM + per-parameter MLP learned optimizer (architecture ``"rnn_mlp"``)."""

    architecture = "rnn_mlp"
    Config = RNNMLPConfig
    State = RNNMLPState
    needs_key = False

    def init(self, key: jax.Array) -> dict:
        return _init_theta(self.config, key)

    def init_slots(self, theta, params) -> dict:
        cfg = self.config
        k = len(cfg.decays)
        zeros = jnp.zeros((len(jax.tree.leaves(params)), cfg.lstm_hidden), jnp.float32)
        return {"momenta": jax.tree.map(lambda p: F.init_accumulators(p, k), params),
                "lstm_state": TensorLSTMState(zeros, zeros),
                "loss_stats": LossStats(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))}

    # -- pieces, public so tests and users can inspect them
    def statistics(self, state: RNNMLPState, grads, params, loss):
        """``(S (T, num_stats), lolv2 inputs pytree, new momenta, new LossStats)`` for this step."""
        cfg = self.config
        inputs, momenta = F.lolv2_inputs(state.momenta, state.iteration, grads, params,
                                         cfg.decays, cfg.time_scales, cfg.norm_eps)
        loss_feats, loss_stats = loss_statistics(loss, state.iteration, state.loss_stats, cfg)
        glob = jnp.concatenate([loss_feats, F.time_features(state.iteration, cfg.time_scales)])
        rows = [jnp.concatenate([tensor_statistics(g, p, m, cfg), glob])
                for g, p, m in zip(jax.tree.leaves(grads), jax.tree.leaves(params),
                                   jax.tree.leaves(momenta))]
        return jnp.stack(rows), inputs, momenta, loss_stats

    def lstm_inputs(self, stats: jax.Array, lstm_state: TensorLSTMState) -> jax.Array:
        """``[S_j, mean_i h_{t-1,i}]`` for every tensor j: ``(T, num_lstm_inputs)``."""
        hbar = jnp.mean(lstm_state.h, axis=0, keepdims=True)
        return jnp.concatenate([stats, jnp.broadcast_to(hbar, (stats.shape[0], hbar.shape[1]))],
                               axis=-1)

    def lr_multiplier(self, theta, h: jax.Array) -> jax.Array:
        """``s_j = exp(lr_mult * (h_j w_s + b_s))`` for hidden states ``h (T, H)``: ``(T,)``."""
        return jnp.exp(self.config.lr_mult * apply_linear(theta["lr_head"], h)[:, 0])

    def tensor_net(self, theta, stats: jax.Array, lstm_state: TensorLSTMState):
        """One batched LSTM step for all tensors:
        ``(new TensorLSTMState, context (T, C), s (T,))``."""
        new = TensorLSTMState(*apply_lstm_cell(theta["lstm"], self.lstm_inputs(stats, lstm_state),
                                               lstm_state.h, lstm_state.c))
        ctx = apply_linear(theta["context_head"], new.h)
        return new, ctx, self.lr_multiplier(theta, new.h)

    # -- the hooks of the shared step
    def features(self, theta, state: RNNMLPState, grads, params, loss):
        """``(inputs, new_state)``: per tensor j the LOLv2 inputs with ``ctx_j`` appended; the
        state with new momenta, per-tensor LSTM state and loss statistics."""
        stats, inputs, momenta, loss_stats = self.statistics(state, grads, params, loss)
        lstm_state, ctx, _ = self.tensor_net(theta, stats, state.lstm_state)
        leaves, treedef = jax.tree.flatten(inputs)
        full = [F.broadcast_global(x, ctx[j]) for j, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, full), self.advance(
            state, momenta=momenta, lstm_state=lstm_state, loss_stats=loss_stats)

    def constant_channels(self) -> tuple[int, int]:
        """The time features and the tensor's context (the same for every parameter of a
        tensor)."""
        start, stop = F.lolv2_time_channels(self.config.decays, self.config.time_scales)
        return start, stop + self.config.context_dim     # ctx_j follows the time features

    def step_scales(self, theta, state: RNNMLPState) -> jax.Array:
        """``s_j`` from the per-tensor LSTM's new hidden states."""
        return self.lr_multiplier(theta, state.lstm_state.h)


__all__ = ["RNNMLP", "RNNMLPConfig", "RNNMLPState", "TensorLSTMState", "LossStats",
           "tensor_statistics", "loss_statistics"]
