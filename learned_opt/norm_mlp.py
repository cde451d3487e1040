"""Normalised per-parameter MLP ("norm_mlp"): a learned step built to transfer across tasks,
widths and horizons (ingredients from Celo2, muLO, VeLO and Harrison et al.; ../REFERENCES).

Per tensor ``p`` with gradient ``g``, t = updates already taken, N = the run's length (0 when
unknown), momenta with decays ``(beta1, *decays)`` and second moment with ``beta2``, all
updated with the current g first:

    m_k <- d_k m_k + (1 - d_k) g          v <- beta2 v + (1 - beta2) g^2
    a    = (m_beta1 / (1 - beta1^(t+1))) / (sqrt(v / (1 - beta2^(t+1))) + 1e-8)   Adam's direction
    x    = [g, p, m_beta1, m_decays.., sqrt(v), a]              per parameter
    x_c <- x_c * rsqrt(norm_eps + mean_tensor(x_c^2))           inputs normalised per tensor
    tau  = [min(t / N, 1), 1] if N > 0 else [0, 0]              fraction of training, "known"
    r    = sqrt(mean_tensor(a^2))                               (``adam_scale`` only)
    c    = [tau, r] if adam_scale or noise_input else tau       the same for the whole tensor
    c   <- [c, sigma]                           (``scale_input``: sigma = clip(log(sqrt(fan_in *
                                                 mean_tensor(p^2))), -3, 3) for ndim >= 2, else 0)
    d, m = MLP([x, c]) - MLP([0, c])                            zero inputs give a zero step
    D    = nominal * a_n + d                    (a_n: the normalised channel a; nominal Adam term)
    D   <- NewtonSchulz(D)                      (``orthogonalize``, matrices, not input weights)
    u    = D * rsqrt(1e-12 + mean_tensor(D^2))                  normalised output, RMS 1
                                                (u = D with ``normalize_output=False``)
    u   <- r * u                                (``adam_scale``: the RMS of Adam's own step)
    u   <- r^k * u                              (k = ``noise_power`` > 0: r not a network input;
                                                 vectors: k_v = ``noise_power_vectors`` if > 0;
                                                 ``noise_per_parameter``: min(|a_i|, 1)^k per parameter)
    c_t  = f + (1 - f) (1 + cos(pi tau_0)) / 2 if N > 0 else 1  (f = ``cosine_floor``; 1 = off)
    h_N  = (H / N)^q if 0 < H < N else 1        (H = ``trained_horizon``, q = ``horizon_power``)
    step = lr * h_N * c_t * s_mup * exp(max_log_scale * tanh(mean_tensor(m))) * u * live
           + lr * weight_decay * p              (decoupled, tensors with ndim >= 2)
    p   <- p - step

``s_mup = mup_base_fan_in / fan_in`` for tensors with ndim >= 2 and 1 for vectors
(``learned_opt.mup``; 1 everywhere with ``mup=False``); ``mup_power`` alpha < 1 makes it
``(mup_base_fan_in / fan_in)^alpha``, larger steps on layers wider than the base and smaller ones on
narrower (``benchmarks/fan_in_power.py`` tries it on a trained rule); ``mup_power_wide_only`` keeps
muP's ``mup_base_fan_in / fan_in`` on the narrower ones, ``s_mup = max(q, q^alpha)``. ``input_names`` (default none) names
input weights: a tensor with a key on its parameter path containing one of these strings
(``("embed",)``: embedding tables) takes muP's input role, ``s_mup = 1``, and is never
orthogonalised (as Muon leaves embeddings to Adam): a lookup table's input is one-hot, so
its fan-in is 1, not the vocabulary that its shape would give. ``live`` is 0 for a tensor whose
gradient is exactly zero. The per-tensor magnitude ``exp(max_log_scale * tanh(.))`` lies in
``[e^-L, e^L]`` and lets the rule anneal with tau; the step's scale is otherwise the explicit
learning rate ``lr``, so a user can schedule it: ``optax.chain(tx, optax.scale_by_schedule(f))``
multiplies every step by ``f(count)``. ``cosine_floor < 1`` builds such a schedule into the rule
itself when the run's length is known, a cosine from 1 to ``cosine_floor`` over the run, so that
meta-training learns the rule *under* the schedule (as Celo2 composes one outside its rule): the
schedule is defined on the fraction of training, so its annealing reaches any horizon, where the
bounded magnitude ``e^-L`` alone stalls (at 20x its meta-training horizon the previous ``general``
plateaus at 22x tuned Adam's final loss, and ends at 0.32x with a cosine composed outside:
``benchmarks/lr_multiples.py --cosine``).

``hypergrad`` beta > 0 adapts each matrix's step size online, as hypergradient descent does
(Baydin et al. 2018) on the log of a per-tensor multiplier ``ell`` (0 at the start): the
derivative of the loss after a step with respect to that step's log-size is ``-g_t . step_{t-1}``,
so a gradient still pointing along the last step (cos > 0) says the steps are too small and
grows them, one turned against it (an overshoot) shrinks them. The cosine (not the raw product)
makes it scale-free, ``|ell| <= B`` bounds it, and it needs no meta-parameters, so a trained rule
can use it at test time. It exists because a rule meta-trained on some widths and
architectures scales its steps for those: on the text RNN suite the shipped rule's
steps are too small by ~4x (``benchmarks/lr_multiples.py``), and no fixed muP power fixes one
net without breaking another. Vectors (biases, gains, a quadratic's parameters) keep ``ell = 0``
unless ``hypergrad_vectors`` beta_v > 0, and then only shrink: ``ell <- clip(ell + beta_v cos, -B,
0)``. On noisy quadratics the cosine of a vector's steps is pushed up by the noise (a symmetric
controller doubled NQM's final loss), but steps that turn against each other are still the
sign of a noise floor that wants smaller steps, which per-tensor normalisation otherwise hides.

``trained_horizon`` (0 = off) extrapolates past the longest episode meta-training showed the
rule: tau only says how far through a run it is, so a run 10x longer than any it was trained on
gets the same steps 10x as many times. Longer runs want smaller steps (for SGD on convex
Lipschitz problems the best constant step of a T-step run falls as 1/sqrt(T), q = 1/2), so a
known horizon N > H shrinks every step by (H / N)^q; runs no longer than H (meta-training's own
episodes among them) are unchanged, so setting it does not change what meta-training sees.

The time channels tau are the same for every parameter of a tensor: the first layer takes them
once per tensor (``constant_channels``). ``adam_scale`` gives the step the RMS ``r`` of Adam's
direction (in (0, 1]: about 1 while gradients agree from step to step, about
sqrt((1 - beta1) / (1 + beta1)) = 0.23 once noise dominates) instead of 1, so the rule keeps
Adam's own annealing under gradient noise, which per-tensor normalisation otherwise removes
(on noisy quadratics a unit-RMS step stalls at a noise floor); the network sees ``r`` as a
per-tensor input; with a zero network and no orthogonalisation the rule is then Adam
(``lr * s_mup * a``). ``noise_power`` k > 0 keeps part of that annealing without an input
(so without new meta-parameters: a trained rule can be fine-tuned with it, ``init_from``): the
step is multiplied by ``r^k`` (k = 1/2: a step about 0.48x as large once noise dominates); the
state then carries each tensor's ``r`` from ``features`` to ``apply``. ``noise_power_vectors``
k_v > 0 gives vectors and scalars (biases, gains, a quadratic's parameters) their own power and
leaves matrices at ``noise_power`` (0 by default): applied to every tensor, k = 1/2 fixed the
noisy quadratics but cost the MLPs and the autoencoder, whose normalised (and orthogonalised)
matrix steps pay under noise, while a vector's normalised step under noise is Adam's direction
at a constant RMS, the noise floor that Adam's own shrinking step avoids. ``noise_per_parameter``
takes each parameter's own ``min(|a_i|, 1)`` as the base of the power instead of the tensor's ``r``
(no new state or meta-parameters): ``r`` is a mean over the tensor, so in one vector whose
well-conditioned coordinates have reached their noise floor (a 30-d diagonal quadratic of condition
number 864) it shrank the steps of the coordinates still far from the optimum as much as theirs,
while ``|a_i|`` is about 1 where gradients still agree and about 0.23 where noise dominates. Untrained (output layer ``output_init_scale``) the
rule is close to Adam with per-tensor normalised, muP-scaled steps. With ``dmd_window > 0`` the
DMD channels are appended after tau (and r). ``noise_input`` gives the network ``r`` as an input
without scaling the step by it: the per-tensor normalisation hides how noisy a tensor's gradient
is (every channel has RMS 1), and ``r`` is the one number that says it, so the rule can learn when
to anneal under noise (as ``noise_power`` did by a fixed power, which hurt tasks where noisy steps
pay) instead of being told; a rule saved without it is fine-tuned with it from a zero first-layer
row for ``r`` (``adapt_theta``), starting from exactly its steps. ``scale_input`` gives the network
each matrix's scale relative to the standard initialisation, ``sigma = log(RMS(p) sqrt(fan_in))``
(0 at ``p ~ N(0, 1/fan_in)``, clipped to [-3, 3]; 0 for vectors and scalars): per-tensor
normalisation hides it too, and a trained rule's steps are the same absolute size on a net
initialised at 0.5x or 2x the standard scale (on the held-out transformers v8's steps were ~2x too
large on the ones initialised large and about right on the small ones); adapted from a rule
without it by a zero first-layer row like ``r``'s. Measured once, not shipped: v8's recipe with it
(config ``general_broad_scale``, 1,000 outer steps from v7) left that row at norm 0.05 and the
held-out bench inside the spread of two seeds (docs/experiments/general_broad_scale). Inputs: ``5 + len(decays)`` per parameter plus the 2
of tau (10 by default; one more with ``adam_scale`` or ``noise_input``, one more with ``scale_input``).

Computed channels first (the same function): the momenta are kept as ``(K,) + p.shape``, a tensor's
inputs are :class:`TensorInputs` (the raw channels stacked on a leading axis, their normalisation
factors and the constant channels), the factors are folded into the first layer's rows and the constant
channels into its bias, and the network runs as ``W^T x``; neither ``x_c`` normalised nor tau is
written per parameter, and XLA:CPU runs the whole rule about 2x faster than with the channels on a
trailing axis (README, "What a step costs").
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from chex import Array, ArrayTree as PyTree

from learned_opt import features as F
from learned_opt import mup
from learned_opt.base import LearnedOptimizer, LOptConfig, register
from learned_opt.checks import are_ints, is_real
from learned_opt.dmd import DMDState
from learned_opt.nets import apply_mlp_channels_first, init_step_mlp

NUM_TIME = 2   # [fraction of training done, horizon known]


class TensorInputs(NamedTuple):
    """One tensor's network inputs, channels first: ``x`` (shape ``(C,) + p.shape``) the raw
    per-parameter channels ``[g, p, m_beta1, m_decays.., sqrt(v), a]`` then any DMD channels;
    ``scale`` (``(C,)``) each channel's per-tensor normalisation ``rsqrt(norm_eps + mean(x_c^2))``
    (1 for DMD channels), folded into the network's first layer, so the normalised inputs are never
    materialised; ``const`` the channels the same for every parameter (tau, and r with
    ``adam_scale`` or ``noise_input``), which enter the first layer as a bias."""

    x: Array
    scale: Array
    const: Array

    def normalized(self, channel: int) -> Array:
        """Channel ``channel`` normalised, shaped like the tensor."""
        return self.x[channel] * self.scale[channel]


def _is_inputs(x) -> bool:
    return isinstance(x, TensorInputs)


class NormMLPState(NamedTuple):
    """``momenta``: leaves ``(1 + len(decays),) + p.shape`` (beta1 first); ``v``: leaves like
    ``p``; ``iteration``: int32, updates taken; ``num_steps``: int32, the run's length (0 =
    unknown); ``dmd``: a ``dmd.DMDState`` or None."""

    momenta: PyTree
    v: PyTree
    iteration: Array
    num_steps: Array
    dmd: DMDState | None = None
    adam_rms: PyTree | None = None   # per tensor r (scalars), ``uses_noise_power`` only
    log_scale: PyTree | None = None  # per tensor ell (scalars), ``uses_hypergrad`` only
    prev_step: PyTree | None = None  # per tensor its last step, ``uses_hypergrad`` only


@dataclasses.dataclass(frozen=True)
class NormMLPConfig(LOptConfig):
    hidden_sizes: tuple[int, ...] = (8, 8)
    beta1: float = 0.9
    beta2: float = 0.999
    decays: tuple[float, ...] = (0.5, 0.99, 0.999)   # extra momenta (inputs only)
    lr: float = 1e-3
    weight_decay: float = 0.0
    nominal: float = 1.0              # weight of Adam's direction in D (0 = purely learned)
    mup: bool = True
    mup_base_fan_in: float = 32.0
    mup_power: float = 1.0            # alpha: s_mup = (mup_base_fan_in / fan_in)^alpha on matrices
    mup_power_wide_only: bool = False  # alpha only where fan_in > mup_base_fan_in (muP below)
    orthogonalize: bool = False
    ns_steps: int = 5
    input_names: tuple[str, ...] = ()   # tensors named so are input weights (muP role "input")
    normalize_output: bool = True
    max_log_scale: float = 2.0        # per-tensor magnitude in [e^-2, e^2]
    adam_scale: bool = False          # step RMS = RMS of Adam's direction (see the docstring)
    noise_input: bool = False         # the network sees r (per tensor) without the step being scaled by it
    scale_input: bool = False         # the network sees sigma, each matrix's log scale vs 1/sqrt(fan_in)
    noise_power: float = 0.0          # > 0: step times r^noise_power (r not a network input)
    noise_power_vectors: float = 0.0  # > 0: vectors' and scalars' power instead (matrices keep noise_power)
    noise_per_parameter: bool = False  # the power's base is each parameter's |a_i|, not the tensor's r
    cosine_floor: float = 1.0         # < 1: cosine decay of the step to this fraction over a known run
    trained_horizon: int = 0          # > 0: steps of known runs longer than this shrink by (H/N)^q;
                                      # set it to meta-training's max_episode_length
    horizon_power: float = 0.5        # q
    hypergrad: float = 0.0            # beta > 0: matrices' steps times exp(ell), ell += beta cos(g, last step)
    hypergrad_bound: float = 3.0      # |ell| <= this
    hypergrad_vectors: float = 0.0    # beta for vectors (ndim < 2), whose ell only shrinks: in [-B, 0]
    hypergrad_grow_only: bool = False  # matrices' ell only grows: in [0, B]
    output_init_scale: float = 0.1
    norm_eps: float = 1e-5
    dmd_window: int = 0
    dmd_rank: int = 3

    def checks(self):
        yield "hidden_sizes", are_ints(self.hidden_sizes), "a non-empty tuple of positive ints"
        yield "beta1", is_real(self.beta1) and 0 <= self.beta1 < 1, "in [0, 1)"
        yield "beta2", is_real(self.beta2) and 0 <= self.beta2 < 1, "in [0, 1)"
        yield "decays", all(is_real(d) and 0.0 <= d < 1.0 for d in self.decays), "values in [0, 1)"
        yield "lr", is_real(self.lr) and self.lr > 0, "a positive number"
        yield "weight_decay", is_real(self.weight_decay) and self.weight_decay >= 0, ">= 0"
        yield "nominal", is_real(self.nominal), "a finite number"
        yield "mup", isinstance(self.mup, bool), "true or false"
        yield "mup_base_fan_in", is_real(self.mup_base_fan_in) and self.mup_base_fan_in > 0, "positive"
        yield "mup_power", is_real(self.mup_power) and 0 <= self.mup_power <= 1, "in [0, 1] (1 = muP)"
        yield "mup_power_wide_only", isinstance(self.mup_power_wide_only, bool) and not (
            self.mup_power_wide_only and not (self.mup and self.mup_power != 1)), \
            "true or false, and true only with mup and mup_power != 1 (else it changes nothing)"
        yield "orthogonalize", isinstance(self.orthogonalize, bool), "true or false"
        yield "ns_steps", are_ints((self.ns_steps,)), "a positive int"
        yield "input_names", isinstance(self.input_names, tuple) and all(
            isinstance(n, str) and n for n in self.input_names), "a tuple of non-empty strings"
        yield "normalize_output", isinstance(self.normalize_output, bool), "true or false"
        yield "adam_scale", isinstance(self.adam_scale, bool), "true or false"
        yield "noise_input", isinstance(self.noise_input, bool) and not (
            self.noise_input and self.adam_scale), "true or false, and false with adam_scale (which has r as an input)"
        yield "scale_input", isinstance(self.scale_input, bool), "true or false"
        yield "noise_power", is_real(self.noise_power) and self.noise_power >= 0 and not (
            self.noise_power > 0 and self.adam_scale), ">= 0, and 0 with adam_scale (which uses r^1)"
        yield "noise_power_vectors", is_real(self.noise_power_vectors) and self.noise_power_vectors >= 0 \
            and not (self.noise_power_vectors > 0 and self.adam_scale), \
            ">= 0, and 0 with adam_scale (which uses r^1)"
        yield "noise_per_parameter", isinstance(self.noise_per_parameter, bool) and not (
            self.noise_per_parameter and not self.uses_noise_power), \
            "true or false, and true only with noise_power or noise_power_vectors > 0"
        yield "cosine_floor", is_real(self.cosine_floor) and 0 <= self.cosine_floor <= 1, "in [0, 1]"
        yield "trained_horizon", isinstance(self.trained_horizon, int) and not isinstance(
            self.trained_horizon, bool) and self.trained_horizon >= 0, "an int >= 0 (0 = off)"
        yield "horizon_power", is_real(self.horizon_power) and self.horizon_power >= 0, ">= 0"
        yield "hypergrad", is_real(self.hypergrad) and self.hypergrad >= 0, ">= 0 (0 = off)"
        yield "hypergrad_bound", is_real(self.hypergrad_bound) and self.hypergrad_bound >= 0, ">= 0"
        yield "hypergrad_grow_only", isinstance(self.hypergrad_grow_only, bool), "true or false"
        yield "hypergrad_vectors", is_real(self.hypergrad_vectors) and self.hypergrad_vectors >= 0, \
            ">= 0 (0 = off)"
        yield "max_log_scale", is_real(self.max_log_scale) and self.max_log_scale >= 0, ">= 0"
        yield "norm_eps", is_real(self.norm_eps) and self.norm_eps > 0, "positive"
        yield from super().checks()

    @property
    def num_per_parameter(self) -> int:
        """Per-parameter channels: g, p, the 1 + len(decays) momenta, sqrt(v), a."""
        return 5 + len(self.decays)

    def hypergrad_limits(self, ndim: int) -> tuple[float, float, float]:
        """``(beta, lo, hi)`` of the online step size of a tensor with ``ndim`` dimensions:
        matrices ``(hypergrad, -B or 0 with hypergrad_grow_only, B)``, vectors and scalars
        ``(hypergrad_vectors, -B, 0)`` (shrink only)."""
        B = self.hypergrad_bound
        if ndim >= 2:
            return self.hypergrad, (0.0 if self.hypergrad_grow_only else -B), B
        return self.hypergrad_vectors, -B, 0.0

    def noise_exponent(self, ndim: int) -> float:
        """k of the step's ``r^k`` for a tensor with ``ndim`` dimensions: ``noise_power`` for
        matrices; for vectors and scalars ``noise_power_vectors`` when it is > 0, else
        ``noise_power``."""
        if ndim < 2 and self.noise_power_vectors > 0:
            return self.noise_power_vectors
        return self.noise_power

    @property
    def uses_noise_power(self) -> bool:
        """Whether the state carries each tensor's ``r`` (``adam_rms``)."""
        return bool(self.noise_power > 0 or self.noise_power_vectors > 0)

    @property
    def uses_hypergrad(self) -> bool:
        """Whether the state carries ``log_scale`` and ``prev_step``."""
        return bool(self.hypergrad > 0 or self.hypergrad_vectors > 0)

    @property
    def r_input(self) -> bool:
        """Whether r is a network input (``adam_scale`` or ``noise_input``)."""
        return bool(self.adam_scale or self.noise_input)

    @property
    def num_constant(self) -> int:
        """Channels the same for every parameter of a tensor: tau, r with ``adam_scale`` or
        ``noise_input``, sigma with ``scale_input``."""
        return NUM_TIME + int(self.r_input) + int(self.scale_input)

    @property
    def num_inputs(self) -> int:
        return self.num_per_parameter + self.num_constant + self.num_dmd_inputs


def fraction_features(iteration: Array, num_steps: Array) -> Array:
    """``[min(t / N, 1), 1]`` when ``N > 0``, else ``[0, 0]`` (float32, shape (2,))."""
    n = jnp.asarray(num_steps, jnp.int32)
    known = n > 0
    frac = jnp.minimum(jnp.asarray(iteration, jnp.float32) / jnp.maximum(n, 1), 1.0)
    return jnp.where(known, jnp.stack([frac, 1.0]), 0.0).astype(jnp.float32)


def cosine_factor(tau: Array, floor: float) -> Array:
    """``floor + (1 - floor) (1 + cos(pi tau_0)) / 2`` when the run's length is known (``tau_1 = 1``),
    else 1: the built-in schedule of ``cosine_floor``."""
    c = floor + (1.0 - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * tau[0]))
    return jnp.where(tau[1] > 0, c, 1.0)


def horizon_factor(num_steps: Array, trained_horizon: int, power: float) -> Array | float:
    """``(H / N)^q`` for a known run longer than ``H = trained_horizon > 0``, else 1 (the Python
    float 1.0 when ``H = 0``, so that the step is computed exactly as without the option)."""
    if trained_horizon <= 0:
        return 1.0
    n = jnp.asarray(num_steps, jnp.float32)
    longer = n > trained_horizon
    return jnp.where(longer, (trained_horizon / jnp.maximum(n, 1.0)) ** power, 1.0).astype(jnp.float32)


def hypergrad_scale(g: Array, step: Array, prev: Array, ell: Array,
                    limits: tuple[float, float, float]) -> tuple[Array, Array]:
    """``(step * exp(ell'), ell')`` with ``ell' = clip(ell + beta * cos(g, prev), lo, hi)`` (``g`` the
    tensor's gradient, ``prev`` its last step, ``(beta, lo, hi)`` = ``limits``, from
    ``NormMLPConfig.hypergrad_limits``); ``(step, ell)`` unchanged when beta is 0 or the tensor is
    empty. ``cos`` is 0 while either is all zeros."""
    b, lo, hi = limits
    if b <= 0 or g.size == 0:
        return step, ell
    dot = jnp.sum(g * prev)
    cos = dot * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(g)) * jnp.sum(jnp.square(prev)), 1e-30))
    ell = jnp.clip(ell + b * cos, lo, hi)
    return step * jnp.exp(ell), ell


SCALE_BOUND = 3.0   # |sigma| <= this


def scale_feature(p: Array) -> Array:
    """``sigma = clip(log(sqrt(fan_in * mean(p^2))), -3, 3)`` for ``ndim >= 2`` (0 at the standard
    scale ``RMS(p) = 1/sqrt(fan_in)``; -3 for an all-zero matrix), 0 for vectors and scalars."""
    if jnp.ndim(p) < 2 or jnp.size(p) == 0:
        return jnp.zeros((), jnp.float32)
    ms = mup.fan_in(jnp.shape(p)) * jnp.mean(jnp.square(p.astype(jnp.float32)))
    return jnp.clip(0.5 * jnp.log(jnp.maximum(ms, 1e-30)), -SCALE_BOUND, SCALE_BOUND)


def adam_rms(a: Array) -> Array:
    """``r = sqrt(mean(a^2))`` over one tensor (0 for an empty one)."""
    return jnp.sqrt(jnp.mean(jnp.square(a))) if a.size else jnp.zeros((), jnp.float32)


@register
class NormMLP(LearnedOptimizer):
    """Normalised, muP-scaled, time-conditioned per-parameter MLP (architecture ``"norm_mlp"``)."""

    architecture = "norm_mlp"
    Config = NormMLPConfig
    State = NormMLPState
    needs_key = False

    @property
    def _decays(self) -> tuple[float, ...]:
        return (self.config.beta1, *self.config.decays)

    def init(self, key: jax.Array) -> dict:
        cfg = self.config
        return {"mlp": init_step_mlp(key, cfg.num_inputs, cfg.hidden_sizes, cfg.output_init_scale)}

    def adapt_theta(self, theta, source):
        """A ``norm_mlp`` without r (``noise_input``) and/or sigma (``scale_input``) as inputs ->
        this one with them: the first layer gets a zero row for each added channel (r after tau,
        sigma after r), so the adapted rule takes exactly the source's steps and fine-tuning starts
        from them. None for any other difference."""
        if not isinstance(source, NormMLP):
            return None
        mine, theirs = self.config, source.config
        add_r = mine.noise_input and not theirs.r_input
        add_s = mine.scale_input and not theirs.scale_input
        if not (add_r or add_s) or (theirs.r_input and not mine.r_input) or \
                (theirs.scale_input and not mine.scale_input):
            return None
        bridged = dataclasses.replace(theirs, noise_input=theirs.noise_input or add_r,
                                      scale_input=mine.scale_input)
        if bridged.num_inputs != mine.num_inputs or \
                tuple(theirs.hidden_sizes) != tuple(mine.hidden_sizes):
            return None
        first = theta["mlp"]["linear_0"]
        w = jnp.asarray(first["w"])
        zero = jnp.zeros((1, w.shape[1]), w.dtype)
        src = theirs.num_per_parameter + NUM_TIME     # the source's rows up to its tau
        rows = [w[:src]]
        for want, have in ((mine.r_input, theirs.r_input), (mine.scale_input, theirs.scale_input)):
            if want:
                rows.append(w[src:src + 1] if have else zero)
            src += int(have)
        w = jnp.concatenate(rows + [w[src:]], axis=0)
        return {**theta, "mlp": {**theta["mlp"], "linear_0": {**first, "w": w}}}

    def constant_channels(self) -> tuple[int, int]:
        """tau, r with ``adam_scale`` or ``noise_input``, sigma with ``scale_input`` (the same for
        every parameter of a tensor)."""
        a = self.config.num_per_parameter
        return a, a + self.config.num_constant

    def opt_init(self, theta, params, num_steps=None):
        n = 0 if num_steps is None else num_steps
        return NormMLPState(**self.init_slots(theta, params), iteration=jnp.zeros((), jnp.int32),
                            num_steps=jnp.asarray(n, jnp.int32), dmd=self.init_dmd(params))

    def init_slots(self, theta, params) -> dict:
        k = len(self._decays)
        slots = {"momenta": jax.tree.map(lambda p: F.init_accumulators(p, k, channels_first=True),
                                         params),
                 "v": jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)}
        if self.config.uses_noise_power:
            slots["adam_rms"] = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
        if self.config.uses_hypergrad:
            slots["log_scale"] = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
            slots["prev_step"] = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        return slots

    def features(self, theta, state: NormMLPState, grads, params, loss):
        cfg = self.config
        t1 = (state.iteration + 1).astype(jnp.float32)
        c1 = 1.0 - jnp.power(jnp.float32(cfg.beta1), t1)
        c2 = 1.0 - jnp.power(jnp.float32(cfg.beta2), t1)
        tau = fraction_features(state.iteration, state.num_steps)

        def one(m, v, g, p):
            g = g.astype(jnp.float32)
            m = F.update_momenta(m, g, self._decays, channels_first=True)
            v = F.update_second_moments(v[..., None], g, (cfg.beta2,))[..., 0]
            a = (m[0] / c1) / (jnp.sqrt(v / c2) + 1e-8)
            x = F.stack_channels(g, p.astype(jnp.float32), m, jnp.sqrt(v), a, channels_first=True)
            r = adam_rms(a)
            const = jnp.concatenate([tau, r[None]]) if cfg.r_input else tau
            if cfg.scale_input:
                const = jnp.concatenate([const, scale_feature(p)[None]])
            return TensorInputs(x, F.second_moment_scales(x, cfg.norm_eps), const), m, v, r

        out = jax.tree.map(one, state.momenta, state.v, grads, params)
        inputs, momenta, v, r = F.unzip(params, out, 4)
        return inputs, self.advance(state, momenta=momenta, v=v,
                                    adam_rms=r if cfg.uses_noise_power else None)

    def concat_inputs(self, inputs, extra):
        """DMD channels (leaves ``p.shape + (C,)``) appended to each tensor's ``x``, channels
        first, with scale 1 (they are not normalised)."""
        def cat(inp, f):
            f = jnp.moveaxis(f.astype(inp.x.dtype), -1, 0)
            return TensorInputs(jnp.concatenate([inp.x, f], axis=0),
                                jnp.concatenate([inp.scale, jnp.ones((f.shape[0],), inp.scale.dtype)]),
                                inp.const)
        return jax.tree.map(cat, inputs, extra, is_leaf=_is_inputs)

    def apply(self, theta, state, inputs, params):
        cfg = self.config
        leaves = jax.tree.leaves(inputs, is_leaf=_is_inputs)
        p_leaves, treedef = jax.tree.flatten(params)
        roles = mup.roles_by_name(params, cfg.input_names)
        scales = (mup.step_scales(params, cfg.mup_base_fan_in, roles, cfg.mup_power,
                                  cfg.mup_power_wide_only) if cfg.mup
                  else [1.0] * len(p_leaves))
        h = horizon_factor(state.num_steps, cfg.trained_horizon, cfg.horizon_power)
        rms = (jax.tree.leaves(state.adam_rms) if cfg.uses_noise_power
               else [None] * len(p_leaves))
        steps = [self.tensor_step(theta, x, p, s, h, orthogonalize=r != "input", noise=n)
                 for x, p, s, r, n in zip(leaves, p_leaves, scales, roles, rms)]
        if cfg.uses_hypergrad:
            pairs = [hypergrad_scale(x.x[0], st, prev, ell, cfg.hypergrad_limits(jnp.ndim(st)))
                     for x, st, prev, ell in zip(leaves, steps, jax.tree.leaves(state.prev_step),
                                                 jax.tree.leaves(state.log_scale))]
            steps = [st for st, _ in pairs]
            state = state._replace(log_scale=jax.tree.unflatten(treedef, [e for _, e in pairs]),
                                   prev_step=jax.tree.unflatten(treedef, steps))
        return jax.tree.unflatten(treedef, steps), state

    def network(self, theta, inputs: TensorInputs) -> tuple[Array, Array]:
        """``(d, m)`` of one tensor's inputs, each shaped like the tensor, minus the network at
        zero per-parameter (and DMD) inputs with the same constant channels. The first layer's
        rows for the per-parameter channels take the channels' normalisation (``inputs.scale``),
        its rows for the constant channels become a bias: the network runs channels first
        (``nets.apply_mlp_channels_first``) on the raw channels."""
        a, b = self.constant_channels()
        first = theta["mlp"]["linear_0"]
        w = jnp.asarray(first["w"], jnp.float32)
        w_x = jnp.concatenate([w[:a], w[b:]], axis=0) * inputs.scale[:, None]
        bias = inputs.const @ w[a:b] + first["b"]
        shape = inputs.x.shape[1:]
        out = apply_mlp_channels_first(theta["mlp"], inputs.x.reshape(inputs.x.shape[0], -1),
                                       (w_x, bias))
        zero = apply_mlp_channels_first(theta["mlp"], jnp.zeros((w_x.shape[0], 1), jnp.float32),
                                        (w_x, bias))
        out = out - zero
        return out[0].reshape(shape), out[1].reshape(shape)

    def tensor_step(self, theta, x: TensorInputs, p: Array, scale: float, horizon=1.0,
                    orthogonalize: bool = True, noise: Array | None = None) -> Array:
        """The step of one tensor (subtracted from p), see the module docstring; ``x`` its
        :class:`TensorInputs`, ``scale`` is ``s_mup``, ``horizon`` is ``h_N`` (a run no longer than H
        multiplies by exactly 1); ``orthogonalize=False`` (input weights) skips Newton-Schulz whatever
        the config says; ``noise`` is the tensor's ``r`` (used with ``noise_power`` or
        ``noise_power_vectors``)."""
        cfg = self.config
        if jnp.size(p) == 0:
            return jnp.zeros(jnp.shape(p), jnp.float32)
        d, m = self.network(theta, x)
        i_a = cfg.num_per_parameter - 1
        D = cfg.nominal * x.normalized(i_a) + d
        if (cfg.orthogonalize and orthogonalize and D.ndim >= 2
                and min(mup.fan_in(D.shape), D.shape[-1]) > 1):
            D = mup.newton_schulz(D, cfg.ns_steps)
        u = D * jax.lax.rsqrt(1e-12 + jnp.mean(jnp.square(D))) if cfg.normalize_output else D
        if cfg.adam_scale:
            u = u * x.const[NUM_TIME]   # r
        k = cfg.noise_exponent(jnp.ndim(p))
        if k > 0:
            if cfg.noise_per_parameter:   # each |a_i| (Adam's direction), at most 1
                noise = jnp.minimum(jnp.abs(x.x[i_a]), 1.0)
            u = u * jnp.power(jnp.maximum(noise, 1e-12), k)   # finite gradient at r = 0
        live = (jnp.sum(jnp.square(x.x[0])) > 0).astype(jnp.float32)
        mag = jnp.exp(cfg.max_log_scale * jnp.tanh(jnp.mean(m)))
        if cfg.cosine_floor < 1.0:
            mag = mag * cosine_factor(x.const[:NUM_TIME], cfg.cosine_floor)
        step = ((cfg.lr * scale) * horizon) * mag * live * u
        if cfg.weight_decay and jnp.ndim(p) >= 2:
            step = step + cfg.lr * cfg.weight_decay * p.astype(jnp.float32)
        return step


__all__ = ["NormMLP", "NormMLPConfig", "NormMLPState", "TensorInputs", "adam_rms", "cosine_factor", "fraction_features",
           "horizon_factor", "hypergrad_scale", "scale_feature"]
