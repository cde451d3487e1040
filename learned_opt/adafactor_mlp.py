"""Adafactor-MLP learned optimizer (small_fc_lopt / "AdafacMLPLOpt", Metz et al., CoLLAs 2022).

A tiny per-parameter MLP (hidden 4 x 4, ReLU) that reads momentum, RMS and
Adafactor-style factored second-moment features; the accumulators' decays are
themselves meta-parameters. With the defaults theta has 197 numbers (190 MLP
weights and biases + 7 decays), cheap enough to apply to large models.

**Decays** (meta-parameters, stored as ``x = log(1 - beta)``, initialised at the
config's decays; ``beta = 1 - exp(x)`` clipped to ``[0, max_decay]``, computed as
``1 - beta = clip(exp(x), 1 - max_decay, 1)``):

    theta["log_one_minus_momentum_decays"]   (K,)  beta^m,  default (0.9, 0.99, 0.999)
    theta["log_one_minus_rms_decay"]         (1,)  beta^v,  default 0.999
    theta["log_one_minus_adafactor_decays"]  (K,)  beta^f,  default (0.9, 0.99, 0.999)

**Accumulators**, updated with the current gradient g before the features are
read (k = 1..K, one slot per decay on a trailing axis):

    m_k  <- beta^m_k m_k + (1 - beta^m_k) g                         momenta
    v    <- beta^v v + (1 - beta^v) g^2                             RMS (second moment)
    a     = g^2 + eps1                                              (eps1 = 1e-30)
    for a tensor with ndim >= 2, factored over its last two axes (rows = axis -2,
    columns = axis -1; leading axes, e.g. a conv kernel's spatial axes, are batch axes):
      r_k <- beta^f_k r_k + (1 - beta^f_k) mean_cols(a)             row accumulator
      c_k <- beta^f_k c_k + (1 - beta^f_k) mean_rows(a)             column accumulator
      vhat_k = r_k c_k^T / mean_rows(r_k)
    for a vector or scalar (not factored): r_k <- beta^f_k r_k + (1 - beta^f_k) a,
      vhat_k = r_k, and r_k is used for both the row and the column features
    u_k   = g * rsqrt(vhat_k + 1e-9)                                Adafactor-preconditioned g
    f_k  <- beta^m_k f_k + (1 - beta^m_k) u_k                       factored momentum

**The 39 inputs** per parameter (K = 3; row/col features broadcast to the parameter):

    ch  0       g                                        1
    ch  1       p                                        1
    ch  2- 4    m_k                                      3
    ch  5       v                                        1
    ch  6- 8    m_k * rsqrt(v + 1e-6)                    3
    ch  9       rsqrt(v + 1e-6)                          1
    ch 10-12    u_k (Adafactor-preconditioned g)         3
    ch 13-15    r_k (row accumulator)                    3
    ch 16-18    c_k (column accumulator)                 3
    ch 19-21    rsqrt(r_k + 1e-8)                        3
    ch 22-24    rsqrt(c_k + 1e-8)                        3
    ch 25-27    f_k (factored momentum)                  3
                                                       ---
                                                        28   normalised: x_c <- x_c * rsqrt(1e-5 + mean_tensor(x_c^2))
    ch 28-38    tanh(t/s - 1), s in {1,3,10,...,1e5}    11   not normalised (t = updates already taken)
                                                       ---
                                                        39   (in general 4 + 8K + len(time_scales))

Channels 0-27 are each normalised per tensor by their second moment (the mean runs
over every element of the tensor), as in the reference; the time features and the
DMD features (already scaled by learned_opt.dmd) are not. With ``dmd_window > 0``
``dmd.num_features(dmd_rank)`` DMD channels of the recent gradients are appended.

**Step**: ``d, m = MLP(inputs)`` (hidden_sizes, ReLU; output layer initialised with
scale ``output_init_scale``), ``p <- p - step_mult * d * exp(exp_mult * m)``. The time
channels are the same for every parameter: their product with the first layer is computed
once per tensor, as a bias (``constant_channels``, ``nets.apply_mlp``).

Meta-parameter count with the defaults: MLP 39*4+4 + 4*4+4 + 4*2+2 = 190, decays
3+1+3 = 7, total 197.

Differences from the reference implementation (google/learned_optimization,
``adafac_mlp_lopt.py``), which groups the same 28 + 11 channels: (1) it factors the
two *largest* axes of a tensor, we factor the last two (the usual row/column
convention; identical for matrices); (2) its "factored momentum" is the stateless
``m_k * rsqrt(vhat_k)``, ours is an accumulated momentum of ``u_k`` (state
``fac_momenta``), paired with the momentum decays; (3) it stores decays as offsets
``log(1 - beta)/10`` from the defaults, we store ``log(1 - beta)`` itself;
(4) ``u_k`` uses ``rsqrt(vhat + 1e-9)`` instead of clamping row and column factors
separately. Everything else (eps values, normalisation, step rule) follows it.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from chex import Array, ArrayTree as PyTree

from learned_opt import features as F
from learned_opt.base import LOptConfig, PerParameterMLP, register
from learned_opt.checks import are_ints
from learned_opt.dmd import DMDState
from learned_opt.nets import init_step_mlp

RMS_EPS = 1e-6          # rsqrt(v + RMS_EPS)
ROW_COL_EPS = 1e-8      # rsqrt(r + ROW_COL_EPS), rsqrt(c + ROW_COL_EPS)
PRECOND_EPS = 1e-9      # u = g * rsqrt(vhat + PRECOND_EPS)
NUM_NORMALISED_PER_K = 8  # channels per decay index among the normalised ones


class AdafactorMLPState(NamedTuple):
    """Accumulators (pytrees like params; K = number of momentum/adafactor decays):

    ``momenta``: ``p.shape + (K,)``; ``rms``: ``p.shape + (1,)``;
    ``row``: ``p.shape[:-1] + (K,)`` for tensors with ndim >= 2, else the full
    accumulator ``p.shape + (K,)``; ``col``: ``p.shape[:-2] + p.shape[-1:] + (K,)`` for
    ndim >= 2, else an empty ``(0,)`` placeholder; ``fac_momenta``: ``p.shape + (K,)``;
    all float32. ``iteration``: int32 scalar, updates taken; ``dmd``: a
    ``dmd.DMDState`` when DMD features are on, else None."""

    momenta: PyTree
    rms: PyTree
    row: PyTree
    col: PyTree
    fac_momenta: PyTree
    iteration: Array
    dmd: DMDState | None = None


@dataclasses.dataclass(frozen=True)
class AdafactorMLPConfig(LOptConfig):
    hidden_sizes: tuple[int, ...] = (4, 4)
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)   # initial values (meta-learned)
    rms_decay: float = 0.999                                    # initial value (meta-learned)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)  # initial values (meta-learned)
    max_decay: float = F.MAX_DECAY    # learned decays are clipped to [0, max_decay]
    time_scales: tuple[float, ...] = F.TIME_SCALES
    step_mult: float = 0.001
    exp_mult: float = 0.001
    output_init_scale: float = 0.01   # scale of the output layer at init (small steps)
    norm_eps: float = 1e-5            # eps in x * rsqrt(eps + mean(x^2))
    dmd_window: int = 0               # gradient snapshots for DMD features (0 = off)
    dmd_rank: int = 3

    def checks(self):
        yield "hidden_sizes", are_ints(self.hidden_sizes), "a non-empty tuple of positive ints"
        yield "max_decay", 0.0 < self.max_decay < 1.0, "in (0, 1)"
        for name in ("momentum_decays", "adafactor_decays"):
            ds = getattr(self, name)
            yield (name, bool(ds) and all(0.0 <= d <= self.max_decay for d in ds),
                   f"a non-empty tuple of values in [0, max_decay={self.max_decay}]")
        yield ("adafactor_decays", len(self.momentum_decays) == len(self.adafactor_decays),
               f"of the same length as momentum_decays {self.momentum_decays} (the factored "
               "momentum pairs them)")
        yield ("rms_decay", 0.0 <= self.rms_decay <= self.max_decay,
               f"in [0, max_decay={self.max_decay}]")
        yield "time_scales", all(s > 0 for s in self.time_scales), "positive"
        yield "norm_eps", self.norm_eps > 0, "positive"
        yield from super().checks()

    @property
    def num_decays(self) -> int:
        return len(self.momentum_decays)

    @property
    def num_normalised(self) -> int:
        """Channels normalised per tensor: ``4 + 8K`` (28 by default)."""
        return 4 + NUM_NORMALISED_PER_K * self.num_decays

    @property
    def num_inputs(self) -> int:
        return self.num_normalised + len(self.time_scales) + self.num_dmd_inputs


class Decays(NamedTuple):
    momentum: F.DecayPair
    rms: F.DecayPair
    adafactor: F.DecayPair


def decays_from_theta(theta: dict, max_decay: float = F.MAX_DECAY) -> Decays:
    """The three groups of decays encoded in theta (``beta = 1 - exp(x)``, clipped)."""
    return Decays(
        F.decays_from_log_one_minus(theta["log_one_minus_momentum_decays"], max_decay),
        F.decays_from_log_one_minus(theta["log_one_minus_rms_decay"], max_decay),
        F.decays_from_log_one_minus(theta["log_one_minus_adafactor_decays"], max_decay))


def adafactor_features(state: AdafactorMLPState, grads: PyTree, params: PyTree,
                       decays: Decays, cfg: AdafactorMLPConfig):
    """Return ``(inputs, new_state)``: per-tensor inputs ``p.shape + (num_inputs without DMD,)``
    (channels in the module docstring) and the state with every accumulator updated and
    ``iteration`` advanced; ``dmd`` is left as it was."""
    tfeat = F.time_features(state.iteration, cfg.time_scales)

    def one(m, v, r, c, fm, g, p):
        g = g.astype(jnp.float32)
        m = F.ema_update(m, g, decays.momentum)
        v = F.ema_update(v, jnp.square(g), decays.rms)
        r, c = F.update_factored_accumulators(r, c, g, decays.adafactor)
        v_hat = F.factored_second_moment(r, c, g.ndim)
        u = F.adafactor_precondition(g, v_hat, PRECOND_EPS)
        fm = F.ema_update(fm, u, decays.momentum)
        r_b, c_b = F.broadcast_row_col(r, c, g.ndim)
        rs = jax.lax.rsqrt(v + RMS_EPS)
        x = F.stack_channels(g, p.astype(jnp.float32), m, v, m * rs, rs, u, r_b, c_b,
                             jax.lax.rsqrt(r_b + ROW_COL_EPS), jax.lax.rsqrt(c_b + ROW_COL_EPS),
                             fm)
        x = F.second_moment_normalize(x, cfg.norm_eps)
        return F.broadcast_global(x, tfeat), m, v, r, c, fm

    out = jax.tree.map(one, state.momenta, state.rms, state.row, state.col, state.fac_momenta,
                       grads, params)
    inputs, m, v, r, c, fm = F.unzip(params, out, 6)
    new_state = state._replace(momenta=m, rms=v, row=r, col=c, fac_momenta=fm,
                               iteration=state.iteration + 1)
    return inputs, new_state


@register
class AdafactorMLP(PerParameterMLP):
    """Adafactor-MLP learned optimizer (architecture ``"adafactor_mlp"``)."""

    architecture = "adafactor_mlp"
    Config = AdafactorMLPConfig
    State = AdafactorMLPState
    needs_key = False

    def init(self, key: jax.Array) -> dict:
        cfg = self.config
        return {
            "mlp": init_step_mlp(key, cfg.num_inputs, cfg.hidden_sizes, cfg.output_init_scale),
            "log_one_minus_momentum_decays": jnp.asarray(F.log_one_minus(cfg.momentum_decays)),
            "log_one_minus_rms_decay": jnp.asarray(F.log_one_minus([cfg.rms_decay])),
            "log_one_minus_adafactor_decays": jnp.asarray(F.log_one_minus(cfg.adafactor_decays)),
        }

    def constant_channels(self) -> tuple[int, int]:
        """The time features (the same for every parameter)."""
        start = self.config.num_normalised
        return start, start + len(self.config.time_scales)

    def decays(self, theta) -> Decays:
        """The decays theta encodes (see :func:`decays_from_theta`)."""
        return decays_from_theta(theta, self.config.max_decay)

    def init_slots(self, theta, params) -> dict:
        k = self.config.num_decays
        row, col = F.unzip(params, jax.tree.map(lambda p: F.init_factored_accumulators(p, k),
                                                params), 2)
        return {"momenta": jax.tree.map(lambda p: F.init_accumulators(p, k), params),
                "rms": jax.tree.map(lambda p: F.init_accumulators(p, 1), params),
                "row": row, "col": col,
                "fac_momenta": jax.tree.map(lambda p: F.init_accumulators(p, k), params)}

    def features(self, theta, state: AdafactorMLPState, grads, params, loss):
        """``(inputs, new_state)`` for this step without DMD; see :func:`adafactor_features`."""
        return adafactor_features(state, grads, params, self.decays(theta), self.config)


__all__ = ["AdafactorMLP", "AdafactorMLPConfig", "AdafactorMLPState", "Decays",
           "decays_from_theta", "adafactor_features"]
