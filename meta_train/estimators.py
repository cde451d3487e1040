"""Outer gradient estimators over an Unroll.

Interface (DESIGN.md):
    init(theta, key) -> est_state
    estimate(theta, est_state, key) -> (grad, est_state, metrics)

PES (Vicol et al. 2021). M antithetic pairs; pair i keeps an inner state per
sign and one accumulator xi_i (zero at episode start). Per truncation of K steps:
    eps_i ~ N(0, sigma^2 I);  unroll K steps with theta + eps_i and theta - eps_i
    (shared data and keys);  xi_i <- xi_i + eps_i;
    g = sum_i (L+_i - L-_i) xi_i / (2 M sigma^2)
where L+-_i is the mean meta-loss over the truncation. A pair whose episode
ends (t >= T) has its inner states and xi reset *between* truncations.
Summed over an episode, E[g] is the gradient of the Gaussian-smoothed
episode objective sum_truncations mean_k L.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train.unroll import Unroll

PyTree = Any


def _tree_where(mask, a, b):
    """Select per particle: mask has shape (n,), leaves have leading axis n."""
    def sel(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)
    return jax.tree.map(sel, a, b)


def _twice(tree):
    """Stack a pair-indexed tree twice along axis 0: (M, ...) -> (2M, ...)."""
    return jax.tree.map(lambda x: jnp.concatenate([x, x], axis=0), tree)


class PESState(NamedTuple):
    inner: PyTree        # inner states, leading axis 2M: [+ particles, - particles]
    accum: PyTree        # xi per pair, theta-shaped with leading axis M
    t: jax.Array         # (M,) int32 steps done in the current episode
    T: jax.Array         # (M,) int32 episode length (multiple of K)


class GradientEstimator:
    """init(theta, key) -> state; estimate(theta, state, key) -> (grad, state, metrics).

    ``constrain`` is applied inside ``estimate`` to every tree whose leaves carry the
    population on axis 0 (perturbed thetas, inner states). It is the identity here; the
    trainer replaces it with a sharding constraint to spread the population over devices.
    """

    @staticmethod
    def constrain(tree):
        return tree

    def init(self, theta, key):
        raise NotImplementedError

    def estimate(self, theta, state, key):
        raise NotImplementedError


class PES(GradientEstimator):
    """Persistent Evolution Strategies with antithetic pairs.

    num_pairs: M (the population is 2M particles); truncation_length: K;
    sigma: perturbation std; loss_clip: |L+ - L-| is clipped to this (None: off).
    """

    def __init__(self, unroll: Unroll, num_pairs: int = 4, truncation_length: int = 20,
                 sigma: float = 0.01, loss_clip: float | None = None,
                 stagger: bool = True):
        self.unroll = unroll
        self.M = int(num_pairs)
        self.K = int(truncation_length)
        self.sigma = float(sigma)
        self.loss_clip = loss_clip
        self.stagger = stagger

    # -- episode bookkeeping ------------------------------------------------
    def _episode_lengths(self, key):
        """Per-pair episode lengths rounded up to a positive multiple of K."""
        raw = jax.vmap(self.unroll.sample_episode_length)(jax.random.split(key, self.M))
        n_trunc = jnp.maximum(1, -(-raw // self.K))
        return (n_trunc * self.K).astype(jnp.int32)

    def _fresh_inner(self, theta, key):
        inner = jax.vmap(self.unroll.init, in_axes=(None, 0))(theta, jax.random.split(key, self.M))
        return _twice(inner)

    def init(self, theta, key) -> PESState:
        k_inner, k_len, k_stag = jax.random.split(key, 3)
        T = self._episode_lengths(k_len)
        if self.stagger:
            # Stagger the first episode: a uniform number of whole truncations in [1, T/K],
            # so that pairs do not all reset at the same outer step.
            n = T // self.K
            first = jax.random.randint(k_stag, (self.M,), 1, n + 1) * self.K
            T = first.astype(jnp.int32)
        accum = jax.tree.map(lambda x: jnp.zeros((self.M,) + jnp.shape(x), jnp.result_type(x)), theta)
        return PESState(self._fresh_inner(theta, k_inner), accum,
                        jnp.zeros((self.M,), jnp.int32), T)

    # -- one truncation -----------------------------------------------------
    def unroll_truncation(self, thetas, inner, key):
        """K steps of all 2M particles, pairs sharing keys. Returns (inner, losses (K, 2M))."""
        keys = jax.random.split(key, (self.K, self.M))
        keys = jnp.concatenate([keys, keys], axis=1)  # the same key for + and - of a pair

        def body(inner, step_keys):
            inner, loss = jax.vmap(self.unroll.step)(thetas, inner, step_keys)
            return inner, loss

        return jax.lax.scan(body, inner, keys)

    def estimate(self, theta, state: PESState, key):
        k_eps, k_steps, k_reset, k_len = jax.random.split(key, 4)
        leaves, treedef = jax.tree.flatten(theta)
        eps_keys = jax.random.split(k_eps, len(leaves))
        eps = jax.tree.unflatten(treedef, [
            self.sigma * jax.random.normal(k, (self.M,) + jnp.shape(x), jnp.result_type(x))
            for k, x in zip(eps_keys, leaves)])
        thetas = jax.tree.map(lambda th, e: jnp.concatenate([th + e, th - e], axis=0), theta, eps)
        thetas, inner = self.constrain((thetas, state.inner))

        inner, losses = self.unroll_truncation(thetas, inner, k_steps)
        L = jnp.mean(losses, axis=0)
        L_pos, L_neg = L[:self.M], L[self.M:]
        accum = jax.tree.map(jnp.add, state.accum, eps)

        finite = jnp.isfinite(L_pos) & jnp.isfinite(L_neg)
        diff = jnp.where(finite, L_pos - L_neg, 0.0)
        if self.loss_clip is not None:
            diff = jnp.clip(diff, -self.loss_clip, self.loss_clip)
        n_ok = jnp.sum(finite)
        scale = 1.0 / (2.0 * jnp.maximum(n_ok, 1) * self.sigma ** 2)
        grad = jax.tree.map(lambda a: scale * jnp.tensordot(diff, a, axes=1), accum)

        # Between truncations: reset finished (or non-finite) pairs.
        t = state.t + self.K
        done = (t >= state.T) | ~finite
        fresh = self._fresh_inner(theta, k_reset)
        inner = _tree_where(jnp.concatenate([done, done]), fresh, inner)
        accum = _tree_where(done, jax.tree.map(jnp.zeros_like, accum), accum)
        t = jnp.where(done, 0, t)
        T = jnp.where(done, self._episode_lengths(k_len), state.T)

        finite_losses = jnp.where(jnp.isfinite(losses), losses, 0.0)
        n_fin = jnp.maximum(jnp.sum(jnp.isfinite(losses)), 1)
        metrics = {
            "meta_loss": jnp.sum(finite_losses) / n_fin,
            "nonfinite_pairs": self.M - n_ok,
            "episodes_ended": jnp.sum(done),
        }
        return grad, PESState(inner, accum, t, T), metrics


def make_estimator(config, unroll: Unroll) -> GradientEstimator:
    """The outer estimator a TrainConfig names, over ``unroll``."""
    return PES(unroll, num_pairs=config.num_pairs, truncation_length=config.truncation_length,
               sigma=config.sigma, loss_clip=config.loss_clip)
