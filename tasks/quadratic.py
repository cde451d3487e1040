"""Noisy diagonal quadratics with a sampled condition number.

cfg = {"centre": c in R^d, "eigs": h in R^d}. With condition number kappa,
h_i = kappa^(-i/(d-1)), i = 0..d-1 (geometric from 1 down to 1/kappa).
loss(x; c, h, b) = 1/2 * sum_i h_i (x_i - c_i - b_i)^2, with batch b ~ N(0, noise^2 I).

Normaliser: loss / sum(h). Since x0, c ~ N(0, I) independently, E[initial loss] =
1/2 * sum h_i E[(x0 - c - b)_i^2] = (1 + noise^2/2) sum(h), so every conditioning starts
near 1, and the expected loss at the optimum x = c is noise^2 / 2 (>= 0 always).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tasks.base import Task, TaskError, TaskFamily, is_int, is_number, log_uniform

SPLITS = ("train", "validation", "test")


def eigenvalues(dim: int, cond) -> jax.Array:
    """Geometric spacing from 1 down to 1/cond (a single 1 when dim == 1)."""
    frac = jnp.arange(dim, dtype=jnp.float32) / max(dim - 1, 1)
    return jnp.asarray(cond, jnp.float32) ** (-frac)


class QuadraticFamily(TaskFamily):
    """Diagonal quadratics of dimension ``dim``; log(cond) ~ U[log min_cond, log max_cond]."""

    name = "quadratic"

    def __init__(self, dim: int = 10, min_cond: float = 1.0, max_cond: float = 100.0,
                 noise: float = 0.1):
        if not (is_int(dim) and dim >= 1):
            raise TaskError(f"quadratic: dim must be a positive integer, got {dim!r}")
        if not (is_number(min_cond) and is_number(max_cond) and 1.0 <= min_cond <= max_cond):
            raise TaskError("quadratic: need 1 <= min_cond <= max_cond, got "
                            f"{min_cond!r}, {max_cond!r}")
        if not (is_number(noise) and noise >= 0):
            raise TaskError(f"quadratic: noise must be a number >= 0, got {noise!r}")
        self.dim, self.min_cond, self.max_cond = int(dim), float(min_cond), float(max_cond)
        self.noise = float(noise)

    def sample(self, key):
        k_c, k_cond = jax.random.split(key)
        cond = log_uniform(k_cond, self.min_cond, self.max_cond)
        return {"centre": jax.random.normal(k_c, (self.dim,)), "eigs": eigenvalues(self.dim, cond)}

    def default_cfg(self, cond: float | None = None):
        """Fixed task: centre from PRNGKey(0), cond = sqrt(min_cond * max_cond) unless given."""
        cond = (self.min_cond * self.max_cond) ** 0.5 if cond is None else cond
        return {"centre": jax.random.normal(jax.random.PRNGKey(0), (self.dim,)),
                "eigs": eigenvalues(self.dim, cond)}

    def task(self, cfg) -> Task:
        c, h, dim, noise = cfg["centre"], cfg["eigs"], self.dim, self.noise

        def init(key):
            return {"x": jax.random.normal(key, (dim,))}

        def loss(params, key, batch):
            return 0.5 * jnp.sum(h * (params["x"] - c - batch) ** 2)

        def sample_batch(key, split="train"):
            if split not in SPLITS:
                raise TaskError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
            return noise * jax.random.normal(key, (dim,))

        def eval_loss(params, split="validation"):
            """Expected loss over the noise: 1/2 sum h ((x - c)^2 + noise^2)."""
            return 0.5 * jnp.sum(h * ((params["x"] - c) ** 2 + noise**2))

        return Task(name=self.name, init=init, loss=loss, sample_batch=sample_batch,
                    normalizer=lambda l: l / jnp.sum(h), eval_loss=eval_loss,
                    expected_loss=eval_loss)
