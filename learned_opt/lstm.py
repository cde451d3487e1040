"""Coordinatewise LSTM learned optimizer (Andrychowicz et al. 2016, "Learning to learn
by gradient descent by gradient descent").

Every coordinate i of every tensor is one row of a batch; the LSTM weights are shared by
all rows, each row keeps its own hidden and cell states (one pair per layer).

**Inputs.** The gradient g_i, preprocessed with ``p = preprocess_p`` (paper, App. A):

    (log|g| / p, sign(g))     if |g| >= e^-p
    (-1,         e^p * g)     otherwise

(2 channels). With ``dmd_window > 0`` the DMD features of the recent gradients
(learned_opt.dmd, ``2 * dmd_rank + 2`` channels) are appended, so
``num_inputs = 2 (+ num_features(dmd_rank))``.

**Network.** ``num_layers`` stacked LSTM cells of ``hidden_size`` units (gate order
i, f, g, o; forget-gate bias ``forget_bias`` at init) and a linear head hidden -> 1:

    h^0_t = x_t;   (h^l_t, c^l_t) = LSTM_l(h^{l-1}_t, (h^l_{t-1}, c^l_{t-1}))
    out_i = h^L_t w_out + b_out
    p_i  <- p_i - output_scale * out_i

(the paper writes ``theta <- theta + g_t`` with ``g_t = c * out``; the sign is absorbed
by the learned head). The default ``output_scale`` is 0.1, not the paper's MNIST value
0.01: with 0.01 the steps are too short for this project's meta-training horizons
(quadratic family, PES, meta_lr 3e-3, measured: eval meta-loss 1.019 -> 0.806 after 100
outer steps and 0.508 after 300, against 1.034 -> 0.224 and 0.150 with 0.1). Pass
``output_scale=0.01`` for the paper's setting. All coordinates of all tensors (N in total) are concatenated
into one ``(N, num_inputs)`` array and go through ONE batched call per layer per step;
the outputs are split back into the tensors. The head is initialised with
``w_out ~ N(0, output_init_scale^2 / hidden_size)``, ``b_out = 0``, so an untrained
optimizer moves each parameter by at most ``output_scale * output_init_scale * ~1``.

theta = ``{"lstm": {"layer_0": {"wx" (num_inputs, 4H), "wh" (H, 4H), "b" (4H,)},
"layer_1": {"wx" (H, 4H), ...}, ...}, "head": {"w" (H, 1), "b" (1,)}}``.

State: ``h``, ``c`` float32 ``(num_layers, N, hidden_size)`` in the flat coordinate
order (``jax.tree.leaves(params)`` order, each leaf raveled C-style); ``iteration``
int32; ``dmd``. In the shared step of ``learned_opt.base``, ``features`` gives the
preprocessed gradients as rows ``(N, 2)``, the DMD channels are flattened into the same rows
(``concat_inputs``) and ``apply`` runs the ``(N, num_inputs)`` rows through the network.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from chex import Array, ArrayTree as PyTree

from learned_opt.base import LearnedOptimizer, LOptConfig, register
from learned_opt.checks import is_int, is_real
from learned_opt.dmd import DMDState
from learned_opt.nets import apply_linear, apply_lstm_cell, init_linear, init_lstm


def preprocess_gradient(g: jax.Array, p: float = 10.0) -> jax.Array:
    """The paper's log/sign gradient preprocessing; returns ``g.shape + (2,)`` float32.

    Safe under jit and differentiation: the log is only taken of values where it is
    used (elsewhere of 1), so neither branch produces NaN values or NaN gradients,
    also at ``g == 0``.
    """
    g = jnp.asarray(g, jnp.float32)
    a = jnp.abs(g)
    big = a >= math.exp(-p)
    log_a = jnp.log(jnp.where(big, a, 1.0))
    first = jnp.where(big, log_a / p, -1.0)
    second = jnp.where(big, jnp.sign(g), math.exp(p) * g)
    return jnp.stack([first, second], axis=-1)


class LSTMState(NamedTuple):
    """``h``, ``c``: float32 ``(num_layers, N, hidden_size)``, N = total number of
    parameters (flat coordinate order, see module docstring); ``iteration``: int32
    scalar, updates taken; ``dmd``: a ``dmd.DMDState`` when DMD features are on, else None."""

    h: Array
    c: Array
    iteration: Array
    dmd: DMDState | None = None


@dataclasses.dataclass(frozen=True)
class LSTMConfig(LOptConfig):
    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1        # c in p <- p - c * out (paper: 0.01; see docstring)
    output_init_scale: float = 0.01  # head weights ~ N(0, s^2 / hidden_size) at init
    forget_bias: float = 1.0
    dmd_window: int = 0              # gradient snapshots for DMD features (0 = off)
    dmd_rank: int = 3

    def checks(self):
        yield "hidden_size", is_int(self.hidden_size), "a positive int"
        yield "num_layers", is_int(self.num_layers), "a positive int"
        yield ("preprocess_p", is_real(self.preprocess_p) and 0 < self.preprocess_p <= 80,
               "a number in (0, 80] (e^p must fit in float32)")
        yield ("output_scale", is_real(self.output_scale) and self.output_scale > 0,
               "a positive number")
        yield ("output_init_scale", is_real(self.output_init_scale) and self.output_init_scale >= 0,
               "a number >= 0")
        yield "forget_bias", is_real(self.forget_bias), "a finite number"
        yield from super().checks()

    @property
    def num_inputs(self) -> int:
        return 2 + self.num_dmd_inputs


@functools.partial(jax.jit, static_argnums=0)   # one compiled call, not many eager ops
def _init_theta(cfg: LSTMConfig, key: jax.Array) -> dict:
    keys = jax.random.split(key, cfg.num_layers + 1)
    H = cfg.hidden_size
    lstm = {f"layer_{l}": init_lstm(keys[l], cfg.num_inputs if l == 0 else H, H, cfg.forget_bias)
            for l in range(cfg.num_layers)}
    return {"lstm": lstm, "head": init_linear(keys[-1], H, 1, cfg.output_init_scale)}


def _num_coordinates(params: PyTree) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def _flatten(tree: PyTree, channels: int | None = None) -> jax.Array:
    """Concatenate the raveled leaves: ``(N,)``, or ``(N, channels)`` for leaves
    ``p.shape + (channels,)``."""
    tail = () if channels is None else (channels,)
    return jnp.concatenate([jnp.reshape(x, (-1,) + tail) for x in jax.tree.leaves(tree)], axis=0)


def _unflatten(flat: jax.Array, like: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for p in leaves:
        n = int(np.size(p))
        out.append(jnp.reshape(flat[start:start + n], jnp.shape(p)))
        start += n
    return jax.tree.unflatten(treedef, out)


@register
class LSTM(LearnedOptimizer):
    """Coordinatewise LSTM learned optimizer (architecture ``"lstm"``)."""

    architecture = "lstm"
    Config = LSTMConfig
    State = LSTMState
    needs_key = False

    def init(self, key: jax.Array) -> dict:
        return _init_theta(self.config, key)

    def init_slots(self, theta, params) -> dict:
        cfg = self.config
        zeros = jnp.zeros((cfg.num_layers, _num_coordinates(params), cfg.hidden_size), jnp.float32)
        return {"h": zeros, "c": zeros}

    def features(self, theta, state: LSTMState, grads, params, loss):
        """``(inputs, new_state)``: the preprocessed gradients of all coordinates as rows
        ``(N, 2)`` (flat coordinate order)."""
        return preprocess_gradient(_flatten(grads), self.config.preprocess_p), self.advance(state)

    def concat_inputs(self, inputs: jax.Array, extra: PyTree) -> jax.Array:
        """Rows ``(N, C)``: the per-tensor channels ``extra`` are flattened into rows too."""
        return jnp.concatenate([inputs, _flatten(extra, self.config.num_dmd_inputs)], axis=-1)

    def network(self, theta, x: jax.Array, h: jax.Array, c: jax.Array):
        """One batched step of the stacked LSTM and the head on rows ``x (N, num_inputs)``;
        returns ``(out (N,), new_h, new_c)`` with ``h, c (num_layers, N, H)``."""
        hs, cs = [], []
        for l in range(self.config.num_layers):
            x, cl = apply_lstm_cell(theta["lstm"][f"layer_{l}"], x, h[l], c[l])
            hs.append(x)
            cs.append(cl)
        out = apply_linear(theta["head"], x)
        return out[:, 0], jnp.stack(hs), jnp.stack(cs)

    def apply(self, theta, state: LSTMState, inputs: jax.Array, params):
        """All coordinates as rows ``inputs (N, num_inputs)`` of one batch:
        ``steps = output_scale * out``, split back into the tensors of ``params``."""
        out, h, c = self.network(theta, inputs, state.h, state.c)
        return _unflatten(self.config.output_scale * out, params), state._replace(h=h, c=c)


__all__ = ["LSTM", "LSTMConfig", "LSTMState", "preprocess_gradient"]
