"""DMD features (``learned_opt.dmd``) in torch, for configs with ``dmd_window > 0``.

Per tensor the state keeps the last ``m = dmd_window`` gradients ``z_1..z_m`` (haiku layout,
``p.shape + (m,)``, oldest first); each step pushes the new gradient first, and
``count = min(step + 1, m)`` of them are filled. On the window ``Z`` (rows: the tensor's
elements, row-major; unfilled columns zeroed; scaled by its largest column RMS) with
``X = Z[:, :-1]``, ``r = dmd_rank``, ``tol = dmd.SVD_TOL``:

    M = Z^T Z;  G, X^T X', X^T z_m = M[:-1, :-1], M[:-1, 1:], M[:-1, -1]
    G = V diag(e) V^T      (top r eigenpairs, e descending);  keep_k = e_k > tol^2 max(e_1, 0), e_k > 1e-30
    P = V diag(keep / sqrt(e))                  A~ = P^T (X^T X') P
    A~ W = W Lambda        (eigenvalues sorted by |lambda| descending, ties in LAPACK's order)
    x~ = P^T (X^T z_m);  forecast = X P A~ x~;  b = (W^H W + 1e-6 I)^-1 W^H x~;  mode1 = |X P w_1 b_1|

and the ``2 r + 2`` channels are ``min(|lambda_k|, 2)``, ``|arg lambda_k| / pi`` (per tensor,
broadcast), ``clip(forecast / (rms(z_m) + 1e-8), -10, 10)`` and ``clip(mode1 / (rms(z_m) + 1e-8),
0, 10)`` (per element). Every quantity is invariant to the sign of each eigenvector of ``G``
and to the scale of each column of ``W``, so LAPACK's choices of them do not matter.
"""
from __future__ import annotations

import math

import torch

from learned_opt.dmd import SVD_TOL

F32 = torch.float32
_TINY = 1e-30


def init(p: torch.Tensor, window: int) -> torch.Tensor:
    """The empty window of tensor ``p``: zeros ``p.shape + (window,)``."""
    return torch.zeros(p.shape + (int(window),), dtype=F32, device=p.device)


def push(snapshots: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Drop the oldest snapshot, append ``g``."""
    return torch.cat([snapshots[..., 1:], g.to(F32).unsqueeze(-1)], dim=-1)


def tensor_features(window: torch.Tensor, count: int, rank: int, tol: float = SVD_TOL) -> torch.Tensor:
    """``dmd.tensor_features``: shape ``window.shape[:-1] + (2 rank + 2,)``."""
    shape = window.shape[:-1]
    m, r = window.shape[-1], int(rank)
    dev = window.device
    Z = window.reshape(-1, m).to(F32)
    Z = Z * (torch.arange(m, device=dev) >= m - count).to(F32)
    col_rms = torch.sqrt(torch.mean(Z.square(), dim=0))
    Z = Z / (torch.max(col_rms) + _TINY)
    X = Z[:, :-1]
    M = Z.T @ Z
    G, XtXp, Xtz = M[:-1, :-1], M[:-1, 1:], M[:-1, -1]
    e, V = torch.linalg.eigh(G)
    e, V = e.flip(0)[:r], V.flip(1)[:, :r]
    keep = (e > (tol ** 2) * torch.clamp(e[0], min=0.0)) & (e > _TINY)
    s_inv = torch.where(keep, torch.rsqrt(torch.where(keep, e, torch.ones_like(e))), torch.zeros_like(e))
    P = V * s_inv
    A = (P.T @ XtXp) @ P
    lam, W = torch.linalg.eig(A)
    order = torch.argsort(-torch.abs(lam), stable=True)
    lam, W = lam[order], W[:, order]
    x_last = P.T @ Xtz
    forecast = X @ (P @ (A @ x_last))
    Wh = W.conj().T
    eye = torch.eye(r, dtype=W.dtype, device=dev)
    b = torch.linalg.solve(Wh @ W + 1e-6 * eye, Wh @ x_last.to(W.dtype))
    phi1 = X.to(W.dtype) @ (P.to(W.dtype) @ W[:, 0])
    mode1 = torch.abs(phi1 * b[0])
    last_rms = torch.sqrt(torch.mean(Z[:, -1].square()))

    per_tensor = torch.cat([torch.clamp(torch.abs(lam), max=2.0),
                            torch.abs(torch.angle(lam)) / math.pi]).to(F32)
    denom = last_rms + 1e-8
    per_param = torch.stack([torch.clamp(forecast / denom, -10.0, 10.0),
                             torch.clamp(mode1 / denom, 0.0, 10.0)], dim=-1).reshape(shape + (2,))
    glob = per_tensor.expand(shape + per_tensor.shape)
    return torch.cat([glob, per_param.to(F32)], dim=-1)


__all__ = ["init", "push", "tensor_features"]
