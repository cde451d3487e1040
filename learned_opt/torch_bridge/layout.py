"""The layout rule: which haiku tensor a torch tensor stands for.

The JAX step depends on a tensor's layout wherever it reads its axes: muP's fan-in is
``prod(shape[:-1])``, Adafactor factors rows (axis -2) against columns (axis -1) with any
leading axes as batch axes, Newton-Schulz orthogonalises ``(prod(shape[:-1]), shape[-1])``.
Those conventions are haiku's: an ``hk.Linear`` weight is ``(in, out)``, an ``hk.Conv2D``
kernel ``(kh, kw, in, out)``. torch stores the same weights as ``(out, in)`` and
``(out, in, kh, kw)``. The bridge therefore steps a torch tensor ``P`` of ``ndim >= 2`` as
the haiku tensor

    H = P.permute(2, ..., ndim - 1, 1, 0)          (out, in, *k)  ->  (*k, in, out)

i.e. a matrix is transposed and a conv weight gets its spatial axes first and ``(in, out)``
last; vectors and scalars are taken as they are. The update is computed on ``H`` exactly as
JAX computes it and permuted back, so a torch ``nn.Linear`` / ``nn.Conv*d`` weight gets the
update JAX gives the corresponding haiku weight. Optimizer state is kept in the haiku
layout ``H.shape (+ channels)``.

A tensor whose torch layout already is haiku's (``nn.Embedding.weight`` is ``(num, dim)``
like ``hk.Embed``'s table) goes in a parameter group with ``layout="haiku"``: it is then
stepped as stored.
"""
from __future__ import annotations

import torch

from learned_opt.errors import LearnedOptError

LAYOUTS = ("torch", "haiku")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise LearnedOptError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def to_haiku_perm(ndim: int) -> tuple[int, ...]:
    """Axes of a torch tensor in haiku order: ``(2, ..., ndim - 1, 1, 0)`` (identity for ndim < 2)."""
    if ndim < 2:
        return tuple(range(ndim))
    return (*range(2, ndim), 1, 0)


def from_haiku_perm(ndim: int) -> tuple[int, ...]:
    """The inverse of :func:`to_haiku_perm`: ``(ndim - 1, ndim - 2, 0, ..., ndim - 3)``."""
    if ndim < 2:
        return tuple(range(ndim))
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def to_haiku(x: torch.Tensor, layout: str = "torch") -> torch.Tensor:
    """The haiku view of a torch tensor, contiguous (row-major like a JAX array)."""
    if layout == "torch" and x.dim() >= 2:
        x = x.permute(*to_haiku_perm(x.dim()))
    return x.contiguous()


def from_haiku(x: torch.Tensor, layout: str = "torch") -> torch.Tensor:
    """A tensor in haiku layout back in torch layout (inverse of :func:`to_haiku`)."""
    if layout == "torch" and x.dim() >= 2:
        x = x.permute(*from_haiku_perm(x.dim()))
    return x


def haiku_shape(shape, layout: str = "torch") -> tuple[int, ...]:
    shape = tuple(shape)
    if layout == "torch" and len(shape) >= 2:
        return tuple(shape[i] for i in to_haiku_perm(len(shape)))
    return shape


__all__ = ["LAYOUTS", "check_layout", "to_haiku_perm", "from_haiku_perm", "to_haiku",
           "from_haiku", "haiku_shape"]
