"""Dynamic-mode-decomposition (DMD) features of the optimisation dynamics.

Any architecture switches these on with ``dmd_window > 0`` in its config; they are
appended to its per-parameter network inputs (the state is created, pushed and its
features appended once, by ``learned_opt.base.LearnedOptimizer``).

**Snapshots.** For every tensor we keep the last ``m = window`` gradients
``z_1..z_m`` (flattened, ``z_m`` the newest). Gradients are the natural state of
the optimisation dynamics: near a minimum with a fixed linear optimizer they
evolve as ``z_{t+1} ~ (I - P H) z_t``, so the DMD eigenvalues estimate the
spectrum of the step's iteration map along the directions the gradients move in:
``|lambda| > 1`` means the step is growing (unstable), ``|lambda| ~ 1`` slow
progress, ``arg lambda ~ pi`` oscillation (the step is too large along that
direction), small ``|lambda|`` fast convergence. Unlike momenta or RMS, these
features describe how the whole tensor's gradient moves, not one coordinate.

**Exact DMD (Tu et al. 2014) by the method of snapshots.** With
``X = [z_1..z_{m-1}]``, ``X' = [z_2..z_m]`` (columns of snapshots not yet filled are
zero) and ``Z`` scaled by its largest column RMS (DMD is scale invariant), all the
work that grows with the tensor size is the Gram matrix ``M = Z^T Z`` (m x m).
``X^T X = V S^2 V^T`` (a symmetric m-1 eigenproblem) gives the thin SVD
``X = U S V^T`` with ``U = X V S^-1``; it is truncated to rank ``r`` and, to stay
finite on rank-deficient or constant windows, directions with
``s_i <= tol * s_1`` get ``1/s_i := 0``. Then

    A~ = U_r^T X' V_r S_r^-1 = P^T (X^T X') P,     P = V_r S_r^-1   (r x r)
    A~ W = W Lambda                                (eigenvalues sorted by |lambda|, descending)
    x~_m = U_r^T z_m = P^T (X^T z_m)                (the newest snapshot in DMD coordinates)
    prediction  z^_{m+1} = U_r A~ x~_m = X P A~ x~_m  (one-step DMD forecast)
    mode 1      phi_1 = U_r w_1 = X P w_1,   amplitudes b = W^+ x~_m   (b at the newest snapshot)

Masked directions give zero rows/columns of ``A~`` and hence eigenvalues 0.

**Features** (``num_features(r) = 2 r + 2`` channels, float32, finite, no gradient):

- per tensor, broadcast to its parameters, for k = 1..r:
  ``min(|lambda_k|, 2)`` and ``|arg lambda_k| / pi`` (conjugate pairs give equal values);
- per parameter: the forecast ``z^_{m+1,i} / rms(z_m)`` and the dominant mode's
  contribution ``|phi_{1,i} b_1| / rms(z_m)``, both clipped to [-10, 10].

The paper (Simanek et al. 2022) does not publish its feature set; this choice keeps
what the reference list names (eigenvalue magnitudes and angles, per-parameter mode
contributions, the one-step prediction) in a bounded, dimensionless form.

Cost: memory ``window`` extra floats per parameter; per step one ``n x m`` Gram
product and two ``n x m`` matrix-vector products per tensor, plus an m x m
``eigh`` and an r x r ``eig`` (LAPACK on CPU; on GPU, JAX runs ``eig`` on the host).
"""
from __future__ import annotations

import types
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
from chex import ArrayTree as PyTree

from learned_opt.checks import check_values, is_int

SVD_TOL = 1e-3        # singular values below SVD_TOL * s_1 are treated as zero
_TINY = 1e-30
_HI = jax.lax.Precision.HIGHEST


class DMDState(NamedTuple):
    """``snapshots``: like params, each leaf ``p.shape + (window,)`` float32, oldest first;
    ``count``: int32, snapshots pushed so far (saturates at ``window``)."""

    snapshots: PyTree
    count: jax.Array


def checks(window: int, rank: int) -> Iterator[tuple[str, bool, str]]:
    """The rules for the config fields ``dmd_window`` and ``dmd_rank`` as ``(field, ok,
    requirement)`` (see ``learned_opt.checks.check_values``): ``window == 0`` (off) or
    ``3 <= window``, and ``1 <= rank < window``."""
    yield "dmd_window", is_int(window, 0), "an integer >= 0 (0 = off)"
    yield "dmd_rank", is_int(rank, 1), "a positive integer"
    if window == 0:
        return
    yield "dmd_window", window >= 3, "0 (off) or >= 3 snapshots"
    yield ("dmd_rank", rank <= window - 1,
           f"<= dmd_window - 1 = {window - 1} (a window of m snapshots has m - 1 snapshot pairs)")


def validate(window: int, rank: int) -> None:
    """Raise LearnedOptError unless ``window == 0`` (off) or ``3 <= window`` and ``1 <= rank < window``."""
    check_values(types.SimpleNamespace(dmd_window=window, dmd_rank=rank), checks(window, rank))


def num_features(rank: int) -> int:
    """Channels added per parameter: 2 per eigenvalue plus forecast and mode contribution."""
    return 2 * int(rank) + 2


def init(params: PyTree, window: int) -> DMDState:
    snaps = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p) + (int(window),), jnp.float32), params)
    return DMDState(snaps, jnp.zeros((), jnp.int32))


def push(state: DMDState, grads: PyTree) -> DMDState:
    """Drop the oldest snapshot of every tensor and append the newest gradient."""
    snaps = jax.tree.map(
        lambda s, g: jnp.concatenate([s[..., 1:], jnp.asarray(g, jnp.float32)[..., None]], axis=-1),
        state.snapshots, grads)
    window = jax.tree.leaves(state.snapshots)[0].shape[-1] if jax.tree.leaves(state.snapshots) else 1
    return DMDState(snaps, jnp.minimum(state.count + 1, window).astype(jnp.int32))


class TensorDMD(NamedTuple):
    """Exact DMD of one tensor's window (see module docstring)."""

    eigenvalues: jax.Array   # (r,) complex, sorted by |lambda| descending
    a_tilde: jax.Array       # (r, r) reduced operator
    forecast: jax.Array      # (n,) one-step prediction of the next (scaled) snapshot
    mode1: jax.Array         # (n,) |phi_1 b_1|, contribution of the dominant mode
    last_rms: jax.Array      # rms of the newest (scaled) snapshot


def tensor_dmd(window: jax.Array, count: jax.Array | int, rank: int, tol: float = SVD_TOL) -> TensorDMD:
    """DMD of one window ``(..., m)``: the trailing axis is time, the rest is flattened."""
    m = window.shape[-1]
    r = int(rank)
    Z = jnp.reshape(window, (-1, m)).astype(jnp.float32)
    Z = Z * (jnp.arange(m) >= m - count).astype(jnp.float32)          # unfilled columns are zero
    col_rms = jnp.sqrt(jnp.mean(jnp.square(Z), axis=0))
    Z = Z / (jnp.max(col_rms) + _TINY)
    X = Z[:, :-1]
    M = jnp.matmul(Z.T, Z, precision=_HI)                                 # (m, m) Gram matrix
    G, XtXp, Xtz = M[:-1, :-1], M[:-1, 1:], M[:-1, -1]
    e, V = jnp.linalg.eigh(G)                                             # ascending
    e, V = e[::-1][:r], V[:, ::-1][:, :r]                                 # top r: s_k^2, v_k
    keep = (e > (tol ** 2) * jnp.maximum(e[0], 0.0)) & (e > _TINY)
    s_inv = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, e, 1.0)), 0.0)
    P = V * s_inv                                                         # (m-1, r) = V_r S_r^-1
    A = jnp.matmul(jnp.matmul(P.T, XtXp, precision=_HI), P, precision=_HI)
    lam, W = jnp.linalg.eig(A)
    order = jnp.argsort(-jnp.abs(lam))
    lam, W = lam[order], W[:, order]
    x_last = P.T @ Xtz                                                    # U_r^T z_m
    forecast = jnp.matmul(X, P @ (A @ x_last), precision=_HI)
    # amplitudes at the newest snapshot: b = W^+ x~_m (ridge-regularised, finite for defective W)
    Wh = jnp.conj(W).T
    b = jnp.linalg.solve(Wh @ W + 1e-6 * jnp.eye(r, dtype=W.dtype), Wh @ x_last.astype(W.dtype))
    phi1 = jnp.matmul(X.astype(W.dtype), (P.astype(W.dtype) @ W[:, 0]), precision=_HI)
    mode1 = jnp.abs(phi1 * b[0])
    last_rms = jnp.sqrt(jnp.mean(jnp.square(Z[:, -1])))
    return TensorDMD(lam, A, forecast, mode1, last_rms)


def tensor_features(window: jax.Array, count, rank: int) -> jax.Array:
    """The ``num_features(rank)`` DMD channels of one tensor, shape ``window.shape[:-1] + (C,)``."""
    shape = window.shape[:-1]
    d = tensor_dmd(jax.lax.stop_gradient(window), count, rank)
    mag = jnp.minimum(jnp.abs(d.eigenvalues), 2.0)
    ang = jnp.abs(jnp.angle(d.eigenvalues)) / jnp.pi
    per_tensor = jnp.concatenate([mag, ang]).astype(jnp.float32)
    denom = d.last_rms + 1e-8
    forecast = jnp.clip(d.forecast / denom, -10.0, 10.0)
    mode1 = jnp.clip(d.mode1 / denom, 0.0, 10.0)
    per_param = jnp.stack([forecast, mode1], axis=-1).reshape(shape + (2,))
    glob = jnp.broadcast_to(per_tensor, shape + per_tensor.shape)
    return jax.lax.stop_gradient(jnp.concatenate([glob, per_param.astype(jnp.float32)], axis=-1))


def features(state: DMDState, rank: int) -> PyTree:
    """Per-parameter DMD features of every tensor: leaves ``p.shape + (num_features(rank),)``."""
    return jax.tree.map(lambda s: tensor_features(s, state.count, rank), state.snapshots)


__all__ = ["DMDState", "TensorDMD", "checks", "validate", "num_features", "init", "push",
           "features", "tensor_dmd", "tensor_features", "SVD_TOL"]
