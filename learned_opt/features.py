"""Small, composable, jit-able feature functions shared by every architecture.

Conventions: a *per-parameter* feature array of a tensor ``p`` has shape
``p.shape + (C,)`` (C feature channels on a trailing axis); accumulators for a
vector of decays ``d`` (shape ``(K,)``) are stored the same way, ``p.shape + (K,)``.
All functions work on one tensor; use ``jax.tree.map`` to apply them to a pytree.
They contain no Python control flow on values, so they jit, vmap and grad.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# LOLv2 defaults (Metz et al.): momentum decays and time-feature scales.
DEFAULT_DECAYS: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0,
                                  1e4, 3e4, 1e5)


def init_accumulators(p: jax.Array, num: int) -> jax.Array:
    """Zeros of shape ``p.shape + (num,)``: one accumulator per decay, per parameter."""
    return jnp.zeros(jnp.shape(p) + (num,), jnp.result_type(p))


def update_momenta(m: jax.Array, g: jax.Array, decays: Sequence[float] | jax.Array) -> jax.Array:
    """Exponential moving averages of the gradient, one per decay.

    ``m_k <- d_k * m_k + (1 - d_k) * g``; ``m`` has shape ``g.shape + (K,)``.
    Concrete decays get ``1 - d`` computed in float64 first (in float32,
    ``1 - 0.9999`` is off by 2e-4 relative); traced (meta-learned) decays are used as is.
    """
    d, one_minus_d = _decay_pair(decays, m.dtype)
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


def stack_channels(*features: jax.Array) -> jax.Array:
    """Concatenate per-parameter arrays on a trailing channel axis.

    Each argument is either shaped like the tensor (one channel, a new axis is
    added) or like the tensor plus a trailing channel axis.
    """
    ndim = min(f.ndim for f in features)
    parts = [f[..., None] if f.ndim == ndim else f for f in features]
    return jnp.concatenate(parts, axis=-1)


def broadcast_global(per_param: jax.Array, glob: jax.Array) -> jax.Array:
    """Append tensor-independent features ``glob`` (shape ``(C,)``) to every parameter."""
    shape = per_param.shape[:-1] + glob.shape
    return jnp.concatenate([per_param, jnp.broadcast_to(glob.astype(per_param.dtype), shape)],
                           axis=-1)
