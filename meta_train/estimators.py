"""Outer gradient estimators over an Unroll.

Interface (DESIGN.md):
    init(theta, key) -> est_state
    estimate(theta, est_state, key) -> (grad, est_state, metrics)

Every leaf of an estimator state with ndim >= 1 carries the population on axis 0, so
the trainer can shard it over devices. Particles come in M groups of two that share
data and keys ("pairs"); with ``antithetic=True`` a pair is theta + eps and theta - eps.

PES (Vicol et al. 2021). Each particle keeps its inner state and an accumulator xi
(zero at episode start). Per truncation of K steps, eps ~ N(0, sigma^2 I), unroll K
steps with the perturbed theta, xi <- xi + eps and
    antithetic:  g = sum_i (L+_i - L-_i) xi_i / (2 M sigma^2)
    otherwise:   g = sum_j (L_j - b_j) xi_j / (N sigma^2),  b_j = mean of the others' L
where L is the particle's mean meta-loss over the truncation. Summed over an episode,
E[g] is the gradient of the Gaussian-smoothed episode objective sum_truncations mean_k L:
unbiased whatever K is.

NRES, noise-reuse ES (Li et al. 2023). Like PES, but each pair draws one eps when its
episode starts and reuses it for every truncation of the episode (no accumulator):
    g = sum_i (L+_i - L-_i) eps_i / (2 M sigma^2)   per truncation.
Unbiased for the same smoothed objective in which one perturbation acts over a whole episode;
its variance is lower than PES's (whose fresh noise per truncation enters xi as a sum).

Objective (PES, NRES, truncated ES, truncated BPTT): ``objective="mean"`` counts every
truncation's mean loss (the episode's mean loss); ``"final"`` counts only the truncation that
ends an episode (L is multiplied by 1[t + K >= T]): the loss at the end of training.

Truncated ES. One shared inner state per pair, advanced with the unperturbed theta
(a third particle per pair, whose loss is the baseline b when not antithetic). The
perturbation only acts inside the truncation, so E[g] is the gradient of the truncated
objective with the starting state held fixed: biased, and for short K the bias can
flip the gradient's sign (a parameter whose effect on the loss shows up late).

Full ES. Every estimate runs whole fresh episodes of the perturbed thetas (init
included) and uses their loss, the episode mean or the last step's: unbiased, exact
in expectation, but one estimate costs a whole episode per particle.

Truncated BPTT. N particles with persistent inner states; g is the mean over particles
of d/dtheta (mean loss over the truncation) by backpropagation through the K steps,
with the starting state held fixed: as biased as truncated ES, zero variance from
perturbations, needs a differentiable step.

Options shared by the ES estimators: ``loss_clip`` clips each loss difference to
[-c, c]; ``sign_delta`` replaces it by sign_delta * sign(difference). A pair (or
particle) with a non-finite loss or gradient is left out of the average, counted in
``metrics["nonfinite_particles"]`` and, for persistent estimators, reset.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree as PyTree

from learned_opt.errors import LearnedOptError
from meta_train.unroll import Unroll



class EstimatorError(LearnedOptError):
    """An invalid estimator choice or option."""


OBJECTIVES = ("mean", "final")


def _tree_where(mask, a, b):
    """Select per particle: mask has shape (n,), leaves have leading axis n."""
    def sel(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)
    return jax.tree.map(sel, a, b)


def _tile(tree, n):
    """Stack a group-indexed tree n times along axis 0: (M, ...) -> (n M, ...)."""
    return jax.tree.map(lambda x: jnp.concatenate([x] * n, axis=0), tree)


def _finite_tree(tree):
    """(n,) True where every leaf's row is finite (leaves with leading axis n)."""
    oks = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.stack(oks).all(axis=0)


def _normal_like(theta, key, n, sigma):
    """n draws of N(0, sigma^2) for every leaf of theta, stacked on axis 0."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        sigma * jax.random.normal(k, (n,) + jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves)])


def _mean_finite(x):
    ok = jnp.isfinite(x)
    return jnp.sum(jnp.where(ok, x, 0.0)) / jnp.maximum(jnp.sum(ok), 1)


class GradientEstimator:
    """init(theta, key) -> state; estimate(theta, state, key) -> (grad, state, metrics).

    ``constrain`` is applied inside ``estimate`` to every tree whose leaves carry the
    population on axis 0 (perturbed thetas, inner states). It is the identity here; the
    trainer replaces it with a sharding constraint to spread the population over devices.
    """

    @staticmethod
    def constrain(tree):
        return tree

    #: inner steps one estimate runs, over all particles (for throughput figures)
    inner_steps_per_estimate: int = 0

    def init(self, theta, key):
        raise NotImplementedError

    def estimate(self, theta, state, key):
        raise NotImplementedError


class _Truncated(GradientEstimator):
    """Episode bookkeeping for estimators that keep inner states across truncations:
    n groups, each with a step counter t and an episode length T (a multiple of K)."""

    def __init__(self, unroll: Unroll, truncation_length: int, stagger: bool,
                 objective: str = "mean"):
        if truncation_length < 1:
            raise EstimatorError(f"truncation_length must be >= 1, got {truncation_length}")
        if objective not in OBJECTIVES:
            raise EstimatorError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.unroll = unroll
        self.K = int(truncation_length)
        self.stagger = stagger
        self.objective = objective

    def _weights(self, t, T):
        """(n,) weight of this truncation's loss in the objective (before t advances)."""
        if self.objective == "final":
            return (t + self.K >= T).astype(jnp.float32)
        return jnp.ones(t.shape, jnp.float32)

    def _episode_lengths(self, key, n):
        raw = jax.vmap(self.unroll.sample_episode_length)(jax.random.split(key, n))
        n_trunc = jnp.maximum(1, -(-raw // self.K))
        return (n_trunc * self.K).astype(jnp.int32)

    def _start_counters(self, key, n):
        """t = 0 and T; with stagger the first episode is cut to a uniform number of whole
        truncations in [1, T/K], so that groups do not all reset at the same outer step."""
        k_len, k_stag = jax.random.split(key)
        T = self._episode_lengths(k_len, n)
        if self.stagger:
            T = (jax.random.randint(k_stag, (n,), 1, T // self.K + 1) * self.K).astype(jnp.int32)
        return jnp.zeros((n,), jnp.int32), T

    def _fresh_inner(self, theta, key, T):
        """New episodes' inner states, one per entry of the lengths ``T`` (n,)."""
        return jax.vmap(self.unroll.start, in_axes=(None, 0, 0))(
            theta, jax.random.split(key, T.shape[0]), T)

    def _step_keys(self, key, n, copies):
        """(K, copies * n) keys: group g's key repeated at g, g + n, ... (shared data)."""
        keys = jax.random.split(key, (self.K, n))
        return jnp.concatenate([keys] * copies, axis=1)

    #: The particles run as this many independent vmapped parts inside the truncation's scan
    #: (1: one vmap over all). The results are the same; the trainer sets 2 on a single CPU device,
    #: where XLA's runtime executes the two groups' independent kernels on both cores at once.
    vmap_groups: int = 1

    def _scan(self, thetas, inner, keys):
        """K steps of every particle. Returns (inner, losses (K, particles))."""
        n = keys.shape[1]
        G = max(1, min(int(self.vmap_groups), n))
        bounds = [n * g // G for g in range(G + 1)]
        spans = list(zip(bounds, bounds[1:]))
        part = lambda tree, a, b: jax.tree.map(lambda x: x[a:b], tree)  # noqa: E731
        group_thetas = [part(thetas, a, b) for a, b in spans]

        def grouped(carry, step_keys):
            out = [jax.vmap(self.unroll.step)(th, s, step_keys[a:b])
                   for th, s, (a, b) in zip(group_thetas, carry, spans)]
            return tuple(o[0] for o in out), jnp.concatenate([o[1] for o in out])
        carry, losses = jax.lax.scan(grouped, tuple(part(inner, a, b) for a, b in spans), keys)
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *carry), losses

    def _advance(self, t, T, ok, key):
        """After a truncation: which groups end their episode (or failed), new t and T."""
        t = t + self.K
        done = (t >= T) | ~ok
        T = jnp.where(done, self._episode_lengths(key, t.shape[0]), T)
        return done, jnp.where(done, 0, t), T


class _ESOptions:
    """Perturbations and the ES combination rule shared by PES, truncated ES and full ES."""

    def _set_es_options(self, num_pairs, sigma, antithetic, loss_clip, sign_delta):
        if num_pairs < 1:
            raise EstimatorError(f"num_pairs must be >= 1, got {num_pairs}")
        if not sigma > 0:
            raise EstimatorError(f"sigma must be > 0, got {sigma}")
        if loss_clip is not None and not loss_clip > 0:
            raise EstimatorError(f"loss_clip must be > 0 or None, got {loss_clip}")
        if sign_delta is not None and not sign_delta > 0:
            raise EstimatorError(f"sign_delta must be > 0 or None, got {sign_delta}")
        self.M = int(num_pairs)
        self.sigma = float(sigma)
        self.antithetic = bool(antithetic)
        self.loss_clip = loss_clip
        self.sign_delta = sign_delta

    @property
    def num_directions(self):
        """Independent perturbations per estimate: M (antithetic pairs) or 2M."""
        return self.M if self.antithetic else 2 * self.M

    def _perturb(self, theta, key):
        """(eps with leading num_directions, thetas with leading 2M)."""
        eps = _normal_like(theta, key, self.num_directions, self.sigma)
        return eps, self._perturbed(theta, eps)

    def _perturbed(self, theta, eps):
        """The 2M particles' thetas for directions ``eps``: theta +- eps, or theta + eps."""
        if self.antithetic:
            return jax.tree.map(lambda th, e: jnp.concatenate([th + e, th - e], axis=0), theta, eps)
        return jax.tree.map(lambda th, e: th + e, theta, eps)

    def _shape_delta(self, d):
        if self.loss_clip is not None:
            d = jnp.clip(d, -self.loss_clip, self.loss_clip)
        if self.sign_delta is not None:
            d = self.sign_delta * jnp.sign(d)
        return d

    def _combine(self, L, directions, pair_ok, baseline=None):
        """ES gradient from particle losses L (2M,) and directions (num_directions, ...).

        Pairs with pair_ok False are left out. Without antithetic sampling each particle's
        loss is compared with ``baseline`` (2M,) or, when None, the leave-one-out mean."""
        M = self.M
        if self.antithetic:
            d = jnp.where(pair_ok, L[:M] - L[M:], 0.0)
            n_ok = jnp.sum(pair_ok)
            denom = 2.0 * jnp.maximum(n_ok, 1) * self.sigma ** 2
        else:
            ok = jnp.concatenate([pair_ok, pair_ok])
            Lz = jnp.where(ok, L, 0.0)
            n_ok = jnp.sum(ok)
            if baseline is None:
                baseline = (jnp.sum(Lz) - Lz) / jnp.maximum(n_ok - 1, 1)
                ok = ok & (n_ok > 1)
            d = jnp.where(ok, Lz - baseline, 0.0)
            denom = jnp.maximum(n_ok, 1) * self.sigma ** 2
        d = self._shape_delta(d)
        return jax.tree.map(lambda a: jnp.tensordot(d, a, axes=1) / denom, directions)


class PESState(NamedTuple):
    inner: PyTree        # inner states, leading axis 2M: [group particles 0..M-1, then M..2M-1]
    accum: PyTree        # xi, theta-shaped with leading axis M (antithetic) or 2M
    t: jax.Array         # (M,) int32 steps done in the current episode
    T: jax.Array         # (M,) int32 episode length (multiple of K)


class PES(_Truncated, _ESOptions):
    """Persistent Evolution Strategies (see module docstring).

    num_pairs: M (the population is 2M particles); truncation_length: K; sigma: the
    perturbation std; antithetic: +-eps pairs (else 2M independent eps with a
    leave-one-out baseline); loss_clip / sign_delta: shape the loss differences.
    """

    def __init__(self, unroll: Unroll, num_pairs: int = 4, truncation_length: int = 20,
                 sigma: float = 0.01, loss_clip: float | None = None, stagger: bool = True,
                 antithetic: bool = True, sign_delta: float | None = None,
                 objective: str = "mean"):
        _Truncated.__init__(self, unroll, truncation_length, stagger, objective)
        self._set_es_options(num_pairs, sigma, antithetic, loss_clip, sign_delta)
        self.inner_steps_per_estimate = 2 * self.M * self.K

    def init(self, theta, key) -> PESState:
        k_inner, k_count = jax.random.split(key)
        t, T = self._start_counters(k_count, self.M)
        accum = jax.tree.map(lambda x: jnp.zeros((self.num_directions,) + jnp.shape(x),
                                                 jnp.result_type(x)), theta)
        return PESState(_tile(self._fresh_inner(theta, k_inner, T), 2), accum, t, T)

    def estimate(self, theta, state: PESState, key):
        k_eps, k_steps, k_reset, k_len = jax.random.split(key, 4)
        eps, thetas = self._perturb(theta, k_eps)
        thetas, inner = self.constrain((thetas, state.inner))
        inner, losses = self._scan(thetas, inner, self._step_keys(k_steps, self.M, 2))
        L = jnp.mean(losses, axis=0) * _tile(self._weights(state.t, state.T), 2)
        accum = jax.tree.map(jnp.add, state.accum, eps)
        pair_ok = jnp.isfinite(L[:self.M]) & jnp.isfinite(L[self.M:])
        grad = self._combine(L, accum, pair_ok)

        # Between truncations: reset pairs whose episode ended (or that went non-finite).
        done, t, T = self._advance(state.t, state.T, pair_ok, k_len)
        fresh = _tile(self._fresh_inner(theta, k_reset, T), 2)
        inner = _tree_where(jnp.concatenate([done, done]), fresh, inner)
        acc_done = done if self.antithetic else jnp.concatenate([done, done])
        accum = _tree_where(acc_done, jax.tree.map(jnp.zeros_like, accum), accum)
        metrics = {"meta_loss": _mean_finite(losses),
                   "nonfinite_particles": 2 * jnp.sum(~pair_ok),
                   "episodes_ended": jnp.sum(done)}
        return grad, PESState(inner, accum, t, T), metrics


class NRESState(NamedTuple):
    inner: PyTree        # inner states, leading axis 2M (as PES)
    eps: PyTree          # the episode's perturbation per direction, theta-shaped with leading M (or 2M)
    t: jax.Array         # (M,) int32
    T: jax.Array         # (M,) int32


class NRES(PES):
    """Noise-reuse ES (see module docstring): PES's particles and episodes, one perturbation per
    episode reused for every truncation. Same options as :class:`PES`."""

    def init(self, theta, key) -> NRESState:
        k_inner, k_count, k_eps = jax.random.split(key, 3)
        t, T = self._start_counters(k_count, self.M)
        eps, _ = self._perturb(theta, k_eps)
        return NRESState(_tile(self._fresh_inner(theta, k_inner, T), 2), eps, t, T)

    def estimate(self, theta, state: NRESState, key):
        k_eps, k_steps, k_reset, k_len = jax.random.split(key, 4)
        thetas, inner = self.constrain((self._perturbed(theta, state.eps), state.inner))
        inner, losses = self._scan(thetas, inner, self._step_keys(k_steps, self.M, 2))
        L = jnp.mean(losses, axis=0) * _tile(self._weights(state.t, state.T), 2)
        pair_ok = jnp.isfinite(L[:self.M]) & jnp.isfinite(L[self.M:])
        grad = self._combine(L, state.eps, pair_ok)

        done, t, T = self._advance(state.t, state.T, pair_ok, k_len)
        fresh = _tile(self._fresh_inner(theta, k_reset, T), 2)
        inner = _tree_where(jnp.concatenate([done, done]), fresh, inner)
        new_eps, _ = self._perturb(theta, k_eps)
        eps_done = done if self.antithetic else jnp.concatenate([done, done])
        eps = _tree_where(eps_done, new_eps, state.eps)
        metrics = {"meta_loss": _mean_finite(losses),
                   "nonfinite_particles": 2 * jnp.sum(~pair_ok),
                   "episodes_ended": jnp.sum(done)}
        return grad, NRESState(inner, eps, t, T), metrics


class TruncatedState(NamedTuple):
    inner: PyTree        # one shared inner state per group, leading axis n
    t: jax.Array         # (n,) int32
    T: jax.Array         # (n,) int32


class TruncatedES(_Truncated, _ESOptions):
    """Truncated ES: M shared inner states advanced with the unperturbed theta; each
    truncation perturbs theta only within the truncation (see module docstring).
    Population per estimate: 2M perturbed particles + M unperturbed ones."""

    def __init__(self, unroll: Unroll, num_pairs: int = 4, truncation_length: int = 20,
                 sigma: float = 0.01, loss_clip: float | None = None, stagger: bool = True,
                 antithetic: bool = True, sign_delta: float | None = None,
                 objective: str = "mean"):
        _Truncated.__init__(self, unroll, truncation_length, stagger, objective)
        self._set_es_options(num_pairs, sigma, antithetic, loss_clip, sign_delta)
        self.inner_steps_per_estimate = 3 * self.M * self.K

    def init(self, theta, key) -> TruncatedState:
        k_inner, k_count = jax.random.split(key)
        t, T = self._start_counters(k_count, self.M)
        return TruncatedState(self._fresh_inner(theta, k_inner, T), t, T)

    def estimate(self, theta, state: TruncatedState, key):
        M = self.M
        k_eps, k_steps, k_reset, k_len = jax.random.split(key, 4)
        eps, thetas = self._perturb(theta, k_eps)
        thetas = jax.tree.map(lambda a, th: jnp.concatenate([a, jnp.broadcast_to(th, (M,) + th.shape)]),
                              thetas, theta)
        thetas, inner = self.constrain((thetas, _tile(state.inner, 3)))
        inner, losses = self._scan(thetas, inner, self._step_keys(k_steps, M, 3))
        L = jnp.mean(losses, axis=0) * _tile(self._weights(state.t, state.T), 3)
        L_pert, L_base = L[:2 * M], L[2 * M:]
        pair_ok = jnp.isfinite(L_pert[:M]) & jnp.isfinite(L_pert[M:])
        grad = self._combine(L_pert, eps, pair_ok, baseline=jnp.concatenate([L_base, L_base]))

        base = jax.tree.map(lambda x: x[2 * M:], inner)
        done, t, T = self._advance(state.t, state.T, pair_ok & jnp.isfinite(L_base), k_len)
        base = _tree_where(done, self._fresh_inner(theta, k_reset, T), base)
        metrics = {"meta_loss": _mean_finite(losses[:, 2 * M:]),
                   "nonfinite_particles": 2 * jnp.sum(~pair_ok),
                   "episodes_ended": jnp.sum(done)}
        return grad, TruncatedState(base, t, T), metrics


class FullESState(NamedTuple):
    estimates: jax.Array   # scalar int32 count (full ES keeps no inner state)


class FullES(GradientEstimator, _ESOptions):
    """ES over whole episodes: every estimate starts fresh episodes of the perturbed
    thetas and runs them to the end. ``loss``: "mean" (the episode's mean meta-loss) or
    "last" (its last step's). With an episode-length range each pair samples its length
    and the scan runs the maximum, ignoring steps past the pair's end."""

    def __init__(self, unroll: Unroll, num_pairs: int = 4, sigma: float = 0.01,
                 loss: str = "mean", loss_clip: float | None = None,
                 antithetic: bool = True, sign_delta: float | None = None):
        spec = unroll.episode_length
        if spec is None:
            raise EstimatorError("full-episode ES needs a finite episode length; this Unroll "
                                 "never ends (episode_length=None): use PES or truncated ES")
        if loss not in ("mean", "last"):
            raise EstimatorError(f"FullES loss must be 'mean' or 'last', got {loss!r}")
        self.unroll = unroll
        self.loss = loss
        self.max_length = int(spec if isinstance(spec, int) else spec[1])
        self._set_es_options(num_pairs, sigma, antithetic, loss_clip, sign_delta)
        self.inner_steps_per_estimate = 2 * self.M * self.max_length

    def init(self, theta, key) -> FullESState:
        return FullESState(jnp.zeros((), jnp.int32))

    def estimate(self, theta, state: FullESState, key):
        M = self.M
        k_eps, k_init, k_steps, k_len = jax.random.split(key, 4)
        eps, thetas = self._perturb(theta, k_eps)
        thetas = self.constrain(thetas)
        T = _tile(jax.vmap(self.unroll.sample_episode_length)(jax.random.split(k_len, M)), 2)
        T = jnp.clip(T, 1, self.max_length)
        init_keys = _tile(jax.random.split(k_init, M), 2)
        inner = self.constrain(jax.vmap(self.unroll.start)(thetas, init_keys, T))
        keys = jnp.concatenate([jax.random.split(k_steps, (self.max_length, M))] * 2, axis=1)

        def body(inner, step_keys):
            return jax.vmap(self.unroll.step)(thetas, inner, step_keys)

        _, losses = jax.lax.scan(body, inner, keys)                   # (T_max, 2M)
        if self.loss == "last":
            L = losses[T - 1, jnp.arange(2 * M)]
        else:
            live = jnp.arange(self.max_length)[:, None] < T[None, :]
            L = jnp.sum(jnp.where(live, losses, 0.0), axis=0) / T
            # A non-finite loss inside the episode must poison its particle's L.
            L = jnp.where(jnp.all(jnp.isfinite(losses) | ~live, axis=0), L, jnp.nan)
        pair_ok = jnp.isfinite(L[:M]) & jnp.isfinite(L[M:])
        grad = self._combine(L, eps, pair_ok)
        metrics = {"meta_loss": _mean_finite(L),
                   "nonfinite_particles": 2 * jnp.sum(~pair_ok),
                   "episodes_ended": jnp.asarray(2 * M, jnp.int32)}
        return grad, FullESState(state.estimates + 1), metrics


class TruncatedBPTT(_Truncated):
    """Truncated backpropagation through time over N persistent particles (see module
    docstring). The step must be differentiable in theta."""

    def __init__(self, unroll: Unroll, num_particles: int = 8, truncation_length: int = 20,
                 stagger: bool = True, objective: str = "mean"):
        _Truncated.__init__(self, unroll, truncation_length, stagger, objective)
        if num_particles < 1:
            raise EstimatorError(f"num_particles must be >= 1, got {num_particles}")
        self.N = int(num_particles)
        self.inner_steps_per_estimate = self.N * self.K

    def init(self, theta, key) -> TruncatedState:
        k_inner, k_count = jax.random.split(key)
        t, T = self._start_counters(k_count, self.N)
        return TruncatedState(self._fresh_inner(theta, k_inner, T), t, T)

    def estimate(self, theta, state: TruncatedState, key):
        k_steps, k_reset, k_len = jax.random.split(key, 3)

        def one(inner, keys, w):
            def truncation_loss(th):
                def body(s, k):
                    return self.unroll.step(th, s, k)
                inner_end, losses = jax.lax.scan(body, inner, keys)
                return w * jnp.mean(losses), (inner_end, losses)
            g, aux = jax.grad(truncation_loss, has_aux=True)(theta)
            return g, aux

        keys = jax.random.split(k_steps, (self.N, self.K))
        grads, (inner, losses) = jax.vmap(one)(self.constrain(state.inner), keys,
                                                self._weights(state.t, state.T))
        grads = self.constrain(grads)
        ok = _finite_tree(grads) & jnp.all(jnp.isfinite(losses), axis=1)
        n_ok = jnp.maximum(jnp.sum(ok), 1)
        grad = jax.tree.map(lambda g: jnp.sum(_tree_where(ok, g, jnp.zeros_like(g)), axis=0) / n_ok,
                            grads)
        done, t, T = self._advance(state.t, state.T, ok, k_len)
        inner = _tree_where(done, self._fresh_inner(theta, k_reset, T), inner)
        metrics = {"meta_loss": _mean_finite(losses),
                   "nonfinite_particles": jnp.sum(~ok),
                   "episodes_ended": jnp.sum(done)}
        return grad, TruncatedState(inner, t, T), metrics


class MultiFamily(GradientEstimator):
    """Several estimators (one per task family: own Unroll, own population shapes, own state)
    as one. With weights w_f normalised to sum to 1 and per-family keys ``split(key, F)``:

        g = sum_f w_f g_f,   state = (state_1, ..., state_F),
        metrics: each family's under "<label>/<name>" (with "<label>/grad_norm" = |g_f|), plus
        meta_loss = sum_f w_f meta_loss_f.

    ``balance=True``: g = sum_f w_f g_f / max(|g_f|, 1e-12), each family's estimate normalised to
    unit norm before weighting. The families' raw meta-gradients differ by 25x (at the shipped
    ``general``, 40 estimates: 2-layer 64-wide MLPs 151, 1-D convs 91, character LSTMs 5.8;
    ``benchmarks/family_gradients.py``), so with raw weights the largest decide
    the direction and a family whose loss moves little in log space is not learned from at all;
    normalised, the weights are each family's real share of the direction.

    One jitted outer step runs every family's truncation; ``constrain`` and ``vmap_groups``
    set here reach every member estimator."""

    def __init__(self, estimators, weights, labels, balance: bool = False):
        if not (len(estimators) == len(weights) == len(labels) >= 1):
            raise EstimatorError("MultiFamily needs one weight and one label per estimator")
        if not all(w > 0 for w in weights):
            raise EstimatorError(f"family weights must be positive, got {list(weights)}")
        total = float(sum(weights))
        self.estimators = list(estimators)
        self.weights = [float(w) / total for w in weights]
        self.labels = list(labels)
        self.balance = bool(balance)
        self.inner_steps_per_estimate = sum(e.inner_steps_per_estimate for e in self.estimators)

    def __setattr__(self, name, value):
        if name in ("constrain", "vmap_groups"):
            for e in self.estimators:
                setattr(e, name, value)
        object.__setattr__(self, name, value)

    def init(self, theta, key):
        keys = jax.random.split(key, len(self.estimators))
        return tuple(e.init(theta, k) for e, k in zip(self.estimators, keys))

    def estimate(self, theta, state, key):
        keys = jax.random.split(key, len(self.estimators))
        grad, states, metrics = None, [], {}
        meta_loss = 0.0
        for e, w, label, s, k in zip(self.estimators, self.weights, self.labels, state, keys):
            g, s, m = e.estimate(theta, s, k)
            norm = optax.tree.norm(g)
            if self.balance:
                g = jax.tree.map(lambda a: a / jnp.maximum(norm, 1e-12), g)
            grad = jax.tree.map(lambda a: w * a, g) if grad is None else jax.tree.map(
                lambda a, b: a + w * b, grad, g)
            states.append(s)
            metrics.update({f"{label}/{name}": v for name, v in m.items()})
            metrics[f"{label}/grad_norm"] = norm
            meta_loss = meta_loss + w * m["meta_loss"]
        metrics["meta_loss"] = meta_loss
        metrics["nonfinite_particles"] = sum(metrics[f"{l}/nonfinite_particles"] for l in self.labels)
        return grad, tuple(states), metrics


def _es_options(config) -> dict:
    return dict(num_pairs=config.num_pairs, sigma=config.sigma, loss_clip=config.loss_clip,
                antithetic=config.antithetic, sign_delta=config.sign_delta)


def _truncated_options(config) -> dict:
    return dict(truncation_length=config.truncation_length, objective=config.meta_objective)


class EstimatorSpec(NamedTuple):
    """A registered estimator: a one-line description and how to build it from a TrainConfig."""
    description: str
    build: Callable[[Any, Unroll], GradientEstimator]


# The one registry of estimator names: TrainConfig validation, make_estimator and the CLI's
# ``--estimator`` choices all read it. Every estimator gets the same population,
# 2 * num_pairs particles.
ESTIMATORS: dict[str, EstimatorSpec] = {
    "pes": EstimatorSpec(
        "persistent ES (unbiased; default)",
        lambda c, u: PES(u, **_truncated_options(c), **_es_options(c))),
    "nres": EstimatorSpec(
        "noise-reuse ES (unbiased; one perturbation per episode, lower variance than PES)",
        lambda c, u: NRES(u, **_truncated_options(c), **_es_options(c))),
    "tes": EstimatorSpec(
        "truncated ES (biased for short truncations)",
        lambda c, u: TruncatedES(u, **_truncated_options(c), **_es_options(c))),
    "full_es": EstimatorSpec(
        "ES over whole episodes",
        lambda c, u: FullES(u, loss=c.full_es_loss, **_es_options(c))),
    "tbptt": EstimatorSpec(
        "truncated backprop through time (biased for short truncations)",
        lambda c, u: TruncatedBPTT(u, num_particles=2 * c.num_pairs, **_truncated_options(c))),
}


def make_estimator(config, unroll: Unroll) -> GradientEstimator:
    """The outer estimator a TrainConfig names (``config.estimator``, a key of ESTIMATORS),
    over ``unroll``."""
    if config.estimator not in ESTIMATORS:
        raise EstimatorError(f"unknown estimator {config.estimator!r}; known: {list(ESTIMATORS)}")
    return ESTIMATORS[config.estimator].build(config, unroll)
