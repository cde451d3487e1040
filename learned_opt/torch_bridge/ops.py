"""torch twins of the shared JAX pieces the bridged steps are built from.

Each function computes, in float32, what its namesake in ``learned_opt.features`` /
``learned_opt.nets`` computes, in the same order of operations, on one tensor in haiku layout
(``learned_opt.torch_bridge.layout``) with feature channels on a trailing axis:

    ema(acc, x; beta, 1 - beta) = beta * acc + (1 - beta) * x        (x: a channel axis added if missing)
    normalize(x)                = x * rsqrt(eps + mean_tensor(x^2))  (per channel; a scalar's: none)
    time_features(t)            = tanh(float32(t) / s - 1)           (s in time_scales)
    mlp(x_pp, c, tail)          = W_L relu(... relu([x_pp, tail] W_rest + (c W_c + b_0)) ...) + b_L

``mlp`` is ``nets.apply_mlp`` on inputs ``[x_pp, c, tail]``: the constant channels ``c`` (time
features, per-tensor context: the same for every parameter of a tensor) follow the
per-parameter ones and precede the optional ``tail`` (DMD channels); the JAX step declares them
``constant_channels`` and multiplies them by the first layer once per tensor, as a bias (``W_c``
their rows of ``W_0``, ``W_rest`` the others); so does this one. Concrete decays get ``1 - beta`` in float64 before the cast to float32, as
``features.update_momenta`` does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

F32 = torch.float32


def tensor(x, device=None) -> torch.Tensor:
    """A float32 torch tensor from a numpy/JAX array or a number."""
    return torch.as_tensor(np.array(x, np.float32), device=device)


def tree_to_torch(tree, device=None):
    """A nested dict of arrays (theta) as the same dict of float32 torch tensors."""
    if isinstance(tree, dict):
        return {k: tree_to_torch(v, device) for k, v in tree.items()}
    return tensor(tree, device)


def decay_pair(decays: Sequence[float], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(beta, 1 - beta)`` of concrete decays, ``1 - beta`` computed in float64 first."""
    d64 = np.asarray(decays, np.float64)
    return tensor(d64, device), tensor(1.0 - d64, device)


def ema(acc: torch.Tensor, x: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor],
        channels_first: bool = False) -> torch.Tensor:
    """``beta * acc + (1 - beta) * x`` on the trailing (decay) axis of ``acc``; on its leading
    axis with ``channels_first`` (``features.update_momenta``'s two layouts)."""
    d, omd = pair
    x = x.to(F32)
    if channels_first:
        lead = (slice(None),) + (None,) * (acc.dim() - 1)
        return d[lead] * acc + omd[lead] * (x[None] if x.dim() == acc.dim() - 1 else x)
    if x.dim() == acc.dim() - 1:
        x = x.unsqueeze(-1)
    return d * acc + omd * x


def mean_all_but_last(x: torch.Tensor) -> torch.Tensor:
    """The mean over every axis but the trailing one, kept as size-1 axes (``x`` itself for
    ``x.dim() == 1``: ``torch.mean`` would read ``dim=()`` as all axes)."""
    if x.dim() <= 1:
        return x
    return x.mean(dim=tuple(range(x.dim() - 1)), keepdim=True)


def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``features.second_moment_normalize``: each channel divided by its RMS over the tensor."""
    return x * torch.rsqrt(eps + mean_all_but_last(x.square()))


def time_features(t: int, scales: Sequence[float], device=None) -> torch.Tensor:
    """``features.time_features``: ``tanh(t / s - 1)``, shape ``(len(scales),)``."""
    s = tensor(scales, device)
    return torch.tanh(torch.tensor(float(t), dtype=F32, device=device) / s - 1.0)


def stack_channels(*features: torch.Tensor) -> torch.Tensor:
    """``features.stack_channels``: concatenate on a trailing channel axis; arguments of the
    smallest rank (shaped like the tensor) get a channel axis first."""
    ndim = min(f.dim() for f in features)
    return torch.cat([f.unsqueeze(-1) if f.dim() == ndim else f for f in features], dim=-1)


def first_layer_bias(mlp: dict, const: torch.Tensor, start: int) -> torch.Tensor:
    """The constant channels' part of the first layer, ``c W_c + b_0``, ``W_c`` the rows
    ``start .. start + len(c) - 1`` of ``W_0``."""
    w0, b0 = mlp["linear_0"]["w"], mlp["linear_0"]["b"]
    return const @ w0[start:start + const.shape[-1]] + b0


def first_layer_rest(mlp: dict, x_pp: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
    """The per-parameter channels' part of the first layer: ``[x_pp, tail] [W_pp; W_tail]``,
    ``W_pp`` the first rows of ``W_0`` and ``W_tail`` its last (``tail``: e.g. DMD channels,
    which follow the constant ones)."""
    w0 = mlp["linear_0"]["w"]
    a = x_pp.shape[-1]
    if tail is None or tail.shape[-1] == 0:
        return x_pp @ w0[:a]
    return torch.cat([x_pp, tail], dim=-1) @ torch.cat([w0[:a], w0[w0.shape[0] - tail.shape[-1]:]])


def mlp_rest(mlp: dict, h: torch.Tensor) -> torch.Tensor:
    """The layers after the first on its pre-activations ``h``: ReLU, then each linear layer."""
    for i in range(1, len(mlp)):
        layer = mlp[f"linear_{i}"]
        h = torch.relu(h) @ layer["w"] + layer["b"]
    return h


def mlp(mlp: dict, x_pp: torch.Tensor, const: torch.Tensor,
        tail: torch.Tensor | None = None) -> torch.Tensor:
    """``nets.apply_mlp`` on inputs ``[x_pp, c, tail]`` whose constant channels ``c`` (the same
    for every parameter) follow the per-parameter ones: ``x_pp`` ``(..., C_pp)``, ``const``
    ``(C_c,)``, ``tail`` ``(..., C_t)`` or None; returns ``(..., n_out)``."""
    bias = first_layer_bias(mlp, const, x_pp.shape[-1])
    return mlp_rest(mlp, first_layer_rest(mlp, x_pp, tail) + bias)


def lolv2_step(out: torch.Tensor, mult, exp_mult: float) -> torch.Tensor:
    """``nets.lolv2_step``: ``mult * d * exp(exp_mult * m)`` with ``d, m = out[..., 0], out[..., 1]``."""
    return mult * out[..., 0] * torch.exp(exp_mult * out[..., 1])


def linear(params: dict, x: torch.Tensor) -> torch.Tensor:
    """``nets.apply_linear``: ``x w + b``."""
    return x @ params["w"] + params["b"]


def lstm_cell(params: dict, x: torch.Tensor, h: torch.Tensor,
              c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nets.apply_lstm_cell``: gates i, f, g, o of ``z = x wx + h wh + b``."""
    z = x @ params["wx"] + h @ params["wh"] + params["b"]
    zi, zf, zg, zo = torch.chunk(z, 4, dim=-1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    h = torch.sigmoid(zo) * torch.tanh(c)
    return h, c


__all__ = ["tensor", "tree_to_torch", "decay_pair", "ema", "mean_all_but_last", "normalize",
           "time_features", "stack_channels", "first_layer_bias", "first_layer_rest", "mlp_rest",
           "mlp", "lolv2_step", "linear", "lstm_cell"]
