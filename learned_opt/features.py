"""Small, composable, jit-able feature functions shared by every architecture.

Conventions: a *per-parameter* feature array of a tensor ``p`` has shape
``p.shape + (C,)`` (C feature channels on a trailing axis); accumulators for a
vector of decays ``d`` (shape ``(K,)``) are stored the same way, ``p.shape + (K,)``.
The ``channels_first`` variants (``(C,) + p.shape``, each channel one contiguous array) are for
architectures that run their network as ``W^T x`` on a leading channel axis
(``nets.apply_mlp_channels_first``).
All functions work on one tensor (use ``jax.tree.map`` to apply them to a pytree) except
:func:`lolv2_inputs`, the LOLv2 inputs of a whole pytree shared by the ``mlp`` and ``rnn_mlp``
architectures. They contain no Python control flow on values, so they jit, vmap and grad.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree as PyTree

# LOLv2 defaults (Metz et al.): momentum decays and time-feature scales.
DEFAULT_DECAYS: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0,
                                  1e4, 3e4, 1e5)


def init_accumulators(p: jax.Array, num: int, dtype=jnp.float32,
                      channels_first: bool = False) -> jax.Array:
    """Zeros of shape ``p.shape + (num,)`` (``(num,) + p.shape`` with ``channels_first``): one
    accumulator per decay, per parameter (float32 by default, also for low-precision parameters)."""
    shape = (num,) + jnp.shape(p) if channels_first else jnp.shape(p) + (num,)
    return jnp.zeros(shape, dtype)


def update_momenta(m: jax.Array, g: jax.Array, decays: Sequence[float] | jax.Array,
                   channels_first: bool = False) -> jax.Array:
    """Exponential moving averages of the gradient, one per decay.

    ``m_k <- d_k * m_k + (1 - d_k) * g``; ``m`` has shape ``g.shape + (K,)`` (``(K,) + g.shape``
    with ``channels_first``).
    Concrete decays get ``1 - d`` computed in float64 first (in float32,
    ``1 - 0.9999`` is off by 2e-4 relative); traced (meta-learned) decays are used as is.
    """
    d, one_minus_d = _decay_pair(decays, m.dtype)
    if channels_first:
        lead = (slice(None),) + (None,) * jnp.ndim(g)
        return d[lead] * m + one_minus_d[lead] * g[None].astype(m.dtype)
    return d * m + one_minus_d * g[..., None].astype(m.dtype)


def _decay_pair(decays, dtype) -> tuple[jax.Array, jax.Array]:
    if isinstance(decays, jax.Array):
        d = decays.astype(dtype)
        return d, 1.0 - d
    d64 = np.asarray(decays, np.float64)
    return jnp.asarray(d64, dtype), jnp.asarray(1.0 - d64, dtype)


def update_second_moments(v: jax.Array, g: jax.Array,
                          decays: Sequence[float] | jax.Array) -> jax.Array:
    """Exponential moving averages of the squared gradient: ``v_k <- d_k v_k + (1-d_k) g^2``."""
    return update_momenta(v, jnp.square(g), decays)


def second_moment_normalize(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Normalise each feature channel of one tensor by its second moment.

    ``x * rsqrt(eps + mean(x^2))`` where the mean runs over all elements of the
    tensor (every axis except the trailing channel axis), separately per channel.
    """
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def time_features(t: jax.Array | int, scales: Sequence[float] = TIME_SCALES) -> jax.Array:
    """``tanh(t / s - 1)`` for each scale s; shape ``(len(scales),)``, float32."""
    s = jnp.asarray(scales, jnp.float32)
    return jnp.tanh(jnp.asarray(t, jnp.float32) / s - 1.0)


def second_moment_scales(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``rsqrt(eps + mean(x_c^2))`` per channel ``c`` of a channels-first ``x`` (shape
    ``(C,) + p.shape``; the mean over all of the tensor's elements): :func:`second_moment_normalize`'s
    factors, shape ``(C,)``, for a network that folds them into its first layer."""
    return jax.lax.rsqrt(eps + jnp.mean(jnp.square(x).reshape(x.shape[0], -1), axis=1))


def stack_channels(*features: jax.Array, channels_first: bool = False) -> jax.Array:
    """Concatenate per-parameter arrays on a trailing channel axis (a leading one with
    ``channels_first``).

    Each argument is either shaped like the tensor (one channel, a new axis is
    added) or like the tensor plus a channel axis.
    """
    ndim = min(f.ndim for f in features)
    if channels_first:
        return jnp.concatenate([f[None] if f.ndim == ndim else f for f in features], axis=0)
    parts = [f[..., None] if f.ndim == ndim else f for f in features]
    return jnp.concatenate(parts, axis=-1)


def broadcast_global(per_param: jax.Array, glob: jax.Array) -> jax.Array:
    """Append tensor-independent features ``glob`` (shape ``(C,)``) to every parameter."""
    shape = per_param.shape[:-1] + glob.shape
    return jnp.concatenate([per_param, jnp.broadcast_to(glob.astype(per_param.dtype), shape)],
                           axis=-1)


def unzip(like: PyTree, tree: PyTree, n: int) -> tuple[PyTree, ...]:
    """Split ``tree``, holding an ``n``-tuple at each leaf position of ``like`` (the result
    of ``jax.tree.map`` with a function returning tuples), into ``n`` trees like ``like``."""
    return tuple(jax.tree.map(lambda _, o: o[i], like, tree) for i in range(n))


def lolv2_time_channels(decays: Sequence[float], time_scales: Sequence[float]) -> tuple[int, int]:
    """``(a, b)``: the channels of :func:`lolv2_inputs` holding the time features (after g, p and
    the K momenta), the same for every parameter."""
    start = 2 + len(decays)
    return start, start + len(time_scales)


def lolv2_inputs(momenta: PyTree, iteration: jax.Array, grads: PyTree, params: PyTree,
                 decays: Sequence[float], time_scales: Sequence[float],
                 norm_eps: float) -> tuple[PyTree, PyTree]:
    """LOLv2's per-parameter inputs (Metz et al.); returns ``(inputs, new_momenta)``.

    Per tensor, with the momenta updated by this gradient first
    (``m_k <- d_k m_k + (1 - d_k) g``) and t = ``iteration``::

        x      = [g, p, m_1..m_K]
        x_c   <- x_c * rsqrt(norm_eps + mean_tensor(x_c^2))   (per channel c)
        inputs = [x, tanh(t/s - 1) for s in time_scales]       (2 + K + len(time_scales))

    ``inputs`` leaves are ``p.shape + (2 + K + len(time_scales),)``, momenta ``p.shape + (K,)``.
    """
    tfeat = time_features(iteration, time_scales)

    def one(m, g, p):
        g = g.astype(jnp.float32)
        m = update_momenta(m, g, decays)
        x = stack_channels(g, p.astype(jnp.float32), m)
        x = second_moment_normalize(x, norm_eps)
        return broadcast_global(x, tfeat), m

    return unzip(params, jax.tree.map(one, momenta, grads, params), 2)


# ---------------------------------------------------------------------------
# Meta-learned decays and Adafactor-style factored second moments.
#
# Decays that are meta-parameters are stored as ``x = log(1 - beta)``; a
# ``DecayPair`` carries both ``beta`` and ``1 - beta`` so that ``1 - beta`` is
# exactly ``exp(x)`` (computing ``1 - (1 - exp(x))`` in float32 loses up to 0.6%
# relative at beta = 0.99999).
#
# Factoring (Shazeer & Stern 2018) acts on the last two axes of a tensor with
# ``ndim >= 2``: axis -2 indexes rows (R), axis -1 columns (C); any leading axes
# (e.g. the spatial axes of a conv kernel) are batch axes, each slice factored
# separately. For ``a = g^2 + eps1`` and decays ``beta_k`` (trailing axis K):
#
#     row_k <- beta_k row_k + (1 - beta_k) mean_cols(a)   shape p.shape[:-1] + (K,)
#     col_k <- beta_k col_k + (1 - beta_k) mean_rows(a)   shape p.shape[:-2] + p.shape[-1:] + (K,)
#     v_hat_k = row_k col_k^T / mean_rows(row_k)          shape p.shape + (K,)
#
# Vectors and scalars are not factored: ``row`` holds the full accumulator
# ``v_k <- beta_k v_k + (1 - beta_k) a`` (shape p.shape + (K,)), ``col`` is an
# empty placeholder of shape (0,), and ``v_hat = v``; ``broadcast_row_col``
# returns ``v`` for both the row and the column feature.
# ---------------------------------------------------------------------------

ADAFACTOR_EPS = 1e-30   # eps1 added to g^2 (Shazeer & Stern 2018)
MAX_DECAY = 0.99999


class DecayPair(NamedTuple):
    """Decays ``beta`` and ``1 - beta`` (each shape ``(K,)``), computed without cancellation."""

    decay: jax.Array
    one_minus: jax.Array


def decays_from_log_one_minus(x: jax.Array, max_decay: float = MAX_DECAY) -> DecayPair:
    """``beta = 1 - exp(x)`` clipped to ``[0, max_decay]``, i.e. ``1 - beta = clip(exp(x), 1 - max_decay, 1)``.

    ``x`` may be traced (a meta-parameter); the inverse is :func:`log_one_minus`.
    """
    omd = jnp.clip(jnp.exp(jnp.asarray(x, jnp.float32)), 1.0 - max_decay, 1.0)
    return DecayPair(1.0 - omd, omd)


def log_one_minus(decays: Sequence[float]) -> np.ndarray:
    """``log(1 - beta)`` in float64 then float32: the meta-parameter encoding of concrete decays."""
    return np.log1p(-np.asarray(decays, np.float64)).astype(np.float32)


def _as_decay_pair(decays, dtype) -> tuple[jax.Array, jax.Array]:
    if isinstance(decays, DecayPair):
        return decays.decay.astype(dtype), decays.one_minus.astype(dtype)
    return _decay_pair(decays, dtype)


def ema_update(acc: jax.Array, x: jax.Array, decays) -> jax.Array:
    """``acc_k <- beta_k acc_k + (1 - beta_k) x`` for K decays on the trailing axis of ``acc``.

    ``x`` is shaped like ``acc`` without its trailing axis, or like ``acc`` itself (one
    input per decay). ``decays``: a ``DecayPair``, a concrete sequence, or a traced array.
    """
    d, omd = _as_decay_pair(decays, acc.dtype)
    x = x.astype(acc.dtype)
    if x.ndim == acc.ndim - 1:
        x = x[..., None]
    return d * acc + omd * x


def is_factored(shape: Sequence[int]) -> bool:
    """Whether a tensor of this shape gets factored (row/column) accumulators: ``ndim >= 2``."""
    return len(shape) >= 2


def init_factored_accumulators(p: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Zero ``(row, col)`` accumulators for ``num`` decays (shapes in the block comment above)."""
    shape = tuple(jnp.shape(p))
    if is_factored(shape):
        return (jnp.zeros(shape[:-1] + (num,), jnp.float32),
                jnp.zeros(shape[:-2] + shape[-1:] + (num,), jnp.float32))
    return jnp.zeros(shape + (num,), jnp.float32), jnp.zeros((0,), jnp.float32)


def update_factored_accumulators(row: jax.Array, col: jax.Array, g: jax.Array, decays,
                                 eps: float = ADAFACTOR_EPS) -> tuple[jax.Array, jax.Array]:
    """One Adafactor accumulator update with ``a = g^2 + eps``; returns ``(row, col)``."""
    a = jnp.square(g.astype(jnp.float32)) + eps
    if not is_factored(g.shape):
        return ema_update(row, a, decays), col
    return (ema_update(row, jnp.mean(a, axis=-1), decays),
            ema_update(col, jnp.mean(a, axis=-2), decays))


def factored_second_moment(row: jax.Array, col: jax.Array, ndim: int,
                           tiny: float = 1e-30) -> jax.Array:
    """``v_hat = row col^T / mean_rows(row)`` per decay, shape ``p.shape + (K,)`` (``ndim = p.ndim``).

    Computed as ``(row / max(mean_rows(row), tiny)) * col`` (no underflow of the product,
    finite at zero state). For unfactored tensors ``v_hat = row`` (the full accumulator).
    """
    if ndim < 2:
        return row
    ratio = row / jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), tiny)   # (..., R, K)
    return ratio[..., :, None, :] * col[..., None, :, :]


def broadcast_row_col(row: jax.Array, col: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
    """Row and column accumulators broadcast to ``p.shape + (K,)``.

    ``row_b[..., i, j, k] = row[..., i, k]``, ``col_b[..., i, j, k] = col[..., j, k]``;
    for unfactored tensors both are the full accumulator.
    """
    if ndim < 2:
        return row, row
    shape = row.shape[:-1] + col.shape[-2:]
    return (jnp.broadcast_to(row[..., :, None, :], shape),
            jnp.broadcast_to(col[..., None, :, :], shape))


def adafactor_precondition(g: jax.Array, v_hat: jax.Array, eps: float = 1e-9) -> jax.Array:
    """``g * rsqrt(v_hat + eps)``, one channel per decay: shape ``v_hat.shape``."""
    return g.astype(v_hat.dtype)[..., None] * jax.lax.rsqrt(v_hat + eps)
