"""Noisy quadratic model (NQM) of Zhang et al. 2019, "Which algorithmic choices matter at which
batch sizes?", as used by Harrison et al. 2022 to probe learned-optimizer stability.

A diagonal quadratic whose stochastic gradient has noise with covariance proportional to the
curvature (C = s * H, s playing the role of 1 / batch size):

    L(x)       = 1/2 sum_i h_i x_i^2                              (eval_loss: noise-free)
    L(x; b)    = L(x) + sum_i sqrt(s * h_i) * b_i * x_i,  b ~ N(0, I_d)   (the batch)
    grad L(x; b) = h * x + sqrt(s * h) * b

so E_b[grad] = h * x exactly and Var_b[grad_i] = s * h_i; E_b[L(x; b)] = L(x).

Spectrum (static ``spectrum``), from the condition number kappa = max h / min h:
- ``geometric``: h_i = kappa^(-i/(d-1)),            i = 0..d-1
- ``power_law``: h_i = (i+1)^(-p), p = log(kappa) / log(d), i = 0..d-1
(both have h_0 = 1 and h_{d-1} = 1/kappa; d = 1 gives h = [1]).

Dynamic cfg = {"cond": kappa, "noise_scale": s}, log(kappa) ~ U[log min_cond, log max_cond],
log(s) ~ U[log min_noise, log max_noise]. Init: x_i = +-1 with random signs, so the initial
noise-free loss is exactly 1/2 sum h and normaliser = loss / (1/2 sum h) starts at 1.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tasks.base import Task, TaskError, TaskFamily, is_int, is_number, log_uniform

SPECTRA = ("geometric", "power_law")
SPLITS = ("train", "validation", "test")


def curvatures(dim: int, cond, spectrum: str = "geometric") -> jax.Array:
    """The d curvatures h, from 1 down to 1/cond (cond may be a traced array)."""
    if spectrum not in SPECTRA:
        raise TaskError(f"nqm: unknown spectrum {spectrum!r}; choose one of {', '.join(SPECTRA)}")
    i = jnp.arange(dim, dtype=jnp.float32)
    log_cond = jnp.log(jnp.asarray(cond, jnp.float32))
    if dim == 1:
        return jnp.ones((1,), jnp.float32)
    if spectrum == "geometric":
        return jnp.exp(-log_cond * i / (dim - 1))
    return jnp.exp(-(log_cond / math.log(dim)) * jnp.log1p(i))


class NQMFamily(TaskFamily):
    """Noisy quadratic models of dimension ``dim`` (see the module docstring)."""

    name = "nqm"

    def __init__(self, dim: int = 100, spectrum: str = "geometric", min_cond: float = 10.0,
                 max_cond: float = 1e4, min_noise: float = 1e-3, max_noise: float = 1.0):
        if not (is_int(dim) and dim >= 1):
            raise TaskError(f"nqm: dim must be a positive integer, got {dim!r}")
        if spectrum not in SPECTRA:
            raise TaskError(f"nqm: unknown spectrum {spectrum!r}; choose one of "
                            f"{', '.join(SPECTRA)}")
        if not (is_number(min_cond) and is_number(max_cond) and 1.0 <= min_cond <= max_cond):
            raise TaskError(f"nqm: need 1 <= min_cond <= max_cond, got {min_cond!r}, "
                            f"{max_cond!r}")
        if not (is_number(min_noise) and is_number(max_noise) and 0 < min_noise <= max_noise):
            raise TaskError(f"nqm: need 0 < min_noise <= max_noise, got {min_noise!r}, "
                            f"{max_noise!r}")
        self.dim, self.spectrum = int(dim), spectrum
        self.min_cond, self.max_cond = float(min_cond), float(max_cond)
        self.min_noise, self.max_noise = float(min_noise), float(max_noise)

    def sample(self, key):
        k_cond, k_noise = jax.random.split(key)
        return {"cond": log_uniform(k_cond, self.min_cond, self.max_cond),
                "noise_scale": log_uniform(k_noise, self.min_noise, self.max_noise)}

    def default_cfg(self, cond: float | None = None, noise_scale: float | None = None):
        """Fixed cfg; each value defaults to the geometric middle of its sampling range.
        ``noise_scale=0`` gives the noise-free quadratic."""
        cond = math.sqrt(self.min_cond * self.max_cond) if cond is None else cond
        noise = math.sqrt(self.min_noise * self.max_noise) if noise_scale is None else noise_scale
        if not (is_number(cond) and cond >= 1.0):
            raise TaskError(f"nqm: cond must be a number >= 1, got {cond!r}")
        if not (is_number(noise) and noise >= 0.0):
            raise TaskError(f"nqm: noise_scale must be a number >= 0, got {noise!r}")
        return {"cond": jnp.asarray(cond, jnp.float32),
                "noise_scale": jnp.asarray(noise, jnp.float32)}

    def curvatures(self, cfg) -> jax.Array:
        return curvatures(self.dim, cfg["cond"], self.spectrum)

    def task(self, cfg) -> Task:
        dim = self.dim
        h = self.curvatures(cfg)
        noise_std = jnp.sqrt(cfg["noise_scale"] * h)
        initial_loss = 0.5 * jnp.sum(h)

        def init(key):
            return {"x": jnp.where(jax.random.bernoulli(key, 0.5, (dim,)), 1.0, -1.0)}

        def clean_loss(x):
            return 0.5 * jnp.sum(h * x * x)

        def loss(params, key, batch):
            x = params["x"]
            return clean_loss(x) + jnp.sum(noise_std * batch * x)

        def sample_batch(key, split="train"):
            if split not in SPLITS:
                raise TaskError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
            return jax.random.normal(key, (dim,))

        def eval_loss(params, split="validation"):
            """The noise-free loss 1/2 sum h x^2 (the expectation over batches)."""
            if split not in SPLITS:
                raise TaskError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
            return clean_loss(params["x"])

        return Task(name=self.name, init=init, loss=loss, sample_batch=sample_batch,
                    normalizer=lambda l: l / initial_loss, eval_loss=eval_loss,
                    expected_loss=eval_loss)   # E_b[L(x; b)] = L(x), any split
