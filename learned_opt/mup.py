"""Maximal-update (muP) step scales, per tensor, and Newton-Schulz orthogonalisation.

**Step scale by role and fan-in** (Yang et al., Tensor Programs V, the Adam row of its table;
muLO applies it to learned optimizers). For a tensor of shape ``(..., fan_out)`` with
``fan_in = prod(shape[:-1])`` and a base fan-in ``n0`` (the width the rule was tuned at):

    role       s (multiplies the per-entry step)
    vector     1                    biases, gains, scalars (ndim < 2)
    input      1                    the first layer: fan_in is the data's, not a width
    hidden     n0 / fan_in
    output     n0 / fan_in

**Fan-in power** alpha (``power``): ``s = (n0 / fan_in)^alpha`` on hidden and output weights,
between muP (1) and no width scaling (0); with ``wide_only`` only layers wider than the base
are affected, ``s = max(n0 / fan_in, (n0 / fan_in)^alpha)``.

**Without roles** (``roles=None``: a learned optimizer sees only shapes) every tensor with
``ndim >= 2`` gets ``n0 / fan_in``. This is the spectral form of muP (Yang, Simon & Bernstein
2023): a weight update should change the layer's output by O(1) per unit, i.e.
``||dW||_2 ~ sqrt(fan_out / fan_in)``; an update of per-entry size ``r`` with aligned
(low-rank) structure has ``||dW||_2 ~ r sqrt(fan_in fan_out)``, so ``r ~ 1 / fan_in`` for every
matrix. For hidden and output layers that is the table above; for the input layer it is
``n0 / d_in``, constant in the width (what muP asks), though not 1.

**Roles by name** (:func:`roles_by_name`): a rule that sees only shapes takes an embedding
table ``(vocab, d)`` for a matrix of fan-in ``vocab``, but its input is one-hot: each row is
a token's input weights, fan-in 1, role ``input`` (``s = 1``). A tensor is named an input when
a key on its parameter path contains one of the given strings (``"embed"``: this project's
``params["embed"]["w"]``, haiku's ``hk.Embed`` ``"embeddings"``); every other tensor keeps
its role by shape (``vector`` for ``ndim < 2``, else ``hidden``).

**Newton-Schulz** (as in Muon): the orthogonal factor ``U V^T`` of a matrix ``G = U S V^T``,
approximately, by 5 iterations of the quintic ``X <- a X + b (X X^T) X + c (X X^T)^2 X`` with
``(a, b, c) = (3.4445, -4.7750, 2.0315)`` from ``X_0 = G / (||G||_F + 1e-7)`` (on the transpose
when rows > columns); it drives every singular value into roughly [0.7, 1.2]. A tensor with
``ndim > 2`` is treated as the matrix ``(prod(shape[:-1]), shape[-1])``.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from chex import ArrayTree as PyTree

from learned_opt.errors import LearnedOptError

ROLES = ("vector", "input", "hidden", "output")
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def fan_in(shape: Sequence[int]) -> int:
    """``prod(shape[:-1])`` (1 for vectors and scalars)."""
    return int(math.prod(shape[:-1])) if len(shape) >= 2 else 1


def step_scale(shape: Sequence[int], base_fan_in: float, role: str | None = None,
               power: float = 1.0, wide_only: bool = False) -> float:
    """The muP multiplier ``s`` of one tensor (see the module docstring); ``power`` alpha gives
    ``(base_fan_in / fan_in)^alpha`` for hidden and output weights (1: muP's own rule);
    ``wide_only`` applies alpha only to tensors wider than the base, ``max(q, q^alpha)`` with
    ``q = base_fan_in / fan_in``, so narrower ones keep muP's larger steps."""
    if role is not None and role not in ROLES:
        raise LearnedOptError(f"muP role must be one of {ROLES}, got {role!r}")
    role = role or shape_role(shape)
    if role in ("vector", "input") or len(shape) < 2 or fan_in(shape) == 0:
        return 1.0   # (a tensor without elements: nothing to scale)
    q = float(base_fan_in) / fan_in(shape)
    return max(q, q ** float(power)) if wide_only else q ** float(power)


def shape_role(shape: Sequence[int]) -> str:
    """The role a tensor gets from its shape alone: ``vector`` (ndim < 2) or ``hidden``."""
    return "vector" if len(shape) < 2 else "hidden"


def is_input_name(keys: Sequence[str], input_names: Sequence[str]) -> bool:
    """Whether one of ``keys`` (a parameter's path keys, or a torch parameter's dotted name)
    contains one of ``input_names``, case-insensitively."""
    return any(n.lower() in str(k).lower() for n in input_names for k in keys)


def roles_by_name(params: PyTree, input_names: Sequence[str]) -> list[str]:
    """The role of every leaf of ``params`` (``jax.tree.leaves`` order): ``input`` where a key
    on its path contains one of ``input_names`` (:func:`is_input_name`), else :func:`shape_role`."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
        out.append("input" if is_input_name(keys, input_names) else shape_role(jnp.shape(leaf)))
    return out


def step_scales(params: PyTree, base_fan_in: float, roles: PyTree | None = None,
                power: float = 1.0, wide_only: bool = False) -> list[float]:
    """``s`` for every leaf of ``params`` (``jax.tree.leaves`` order); ``roles``: None, a
    list of role names in that order (:func:`roles_by_name`), or a tree like ``params`` with a
    role name at each leaf."""
    leaves = jax.tree.leaves(params)
    names = [None] * len(leaves) if roles is None else jax.tree.leaves(roles)
    if len(names) != len(leaves):
        raise LearnedOptError(f"roles must name every tensor: {len(names)} roles for "
                              f"{len(leaves)} tensors")
    return [step_scale(jnp.shape(p), base_fan_in, r, power, wide_only) for p, r in zip(leaves, names)]


def newton_schulz(g: jax.Array, steps: int = 5, eps: float = 1e-7) -> jax.Array:
    """Approximately orthogonalised ``g`` (same shape); vectors and scalars are returned as is."""
    if g.ndim < 2:
        return g
    shape = g.shape
    x = g.reshape(-1, shape[-1]).astype(jnp.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (jnp.linalg.norm(x) + eps)
    a, b, c = NS_COEFFS
    for _ in range(int(steps)):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    if tall:
        x = x.T
    return x.reshape(shape)


__all__ = ["ROLES", "NS_COEFFS", "fan_in", "shape_role", "is_input_name", "roles_by_name", "step_scale", "step_scales",
           "newton_schulz"]
