"""Task augmentation: wrappers that turn any family into a family of equivalent problems in other
coordinates and scales, so a learned optimizer cannot rely on one scale (learned_optimization's
task augmentation; Celo/Celo2 reparameterisation, ../REFERENCES).

``augmented(family, reparam=(lo, hi), loss_scale=(lo, hi), grad_scale=(lo, hi),
batch_fraction=(lo, 1))`` samples, per task, independently (each factor log-uniform in its
range, an option left None is off):

    s_j   per tensor j       the optimizer sees q_j with p_j = s_j q_j
    c     loss scale         the loss the optimizer sees is c * L (its gradient too)
    k     gradient scale     the gradient the optimizer sees is k * dL/dq; the loss is unchanged
    f     batch fraction     a batch of B rows holds only b = max(1, round(f B)) distinct examples

so the augmented task is

    init(key)          q = p0 / s                   (p0 the base task's init)
    loss(q, key, x)    c * L(s * q, key, x_b)       gradient wrt q: k * c * s * dL/dp
    normalizer(l)      normalizer_base(l / c)       the meta-loss sees the base task's scale
    eval_loss(q, sp)   c * L_eval(s * q, sp)

with ``x_b`` the batch whose rows are the first b rows repeated (row i is row i mod b): the
same batch shape, a mean over b examples (exactly when b divides B, else rows weighted
ceil/floor(B/b)), i.e. the gradient noise of batch size b. The reparameterised loss surface is
the same problem: ``loss(p / s) == L(p)`` at every p (tested). The batch option needs batches
whose every leaf has the same leading example axis (every classifier family here).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tasks.base import Task, TaskError, TaskFamily, is_number

OPTIONS = ("reparam", "loss_scale", "grad_scale", "batch_fraction")


@jax.custom_vjp
def _scale_grad(x, k):
    return x


def _scale_grad_fwd(x, k):
    return x, k


def _scale_grad_bwd(k, g):
    return jax.tree.map(lambda a: a * k, g), jnp.zeros_like(k)


_scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)


def _check_range(name, value, upper=None):
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value)
          and 0 < value[0] <= value[1] and (upper is None or value[1] <= upper))
    if not ok:
        bound = f" <= {upper}" if upper is not None else ""
        raise TaskError(f"augment: {name} must be null or [lo, hi] with 0 < lo <= hi{bound}, "
                        f"got {value!r}")
    return float(value[0]), float(value[1])


def _log_uniform(key, rng, shape=()):
    lo, hi = rng
    return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


class AugmentedFamily(TaskFamily):
    """``family`` with sampled reparameterisation, loss and gradient scales and batch size (see
    the module docstring). cfg: ``{"base": base cfg, "s": per-tensor scales (tree like params),
    "c", "k", "b"}``."""

    def __init__(self, family: TaskFamily, reparam=None, loss_scale=None, grad_scale=None,
                 batch_fraction=None):
        if not isinstance(family, TaskFamily):
            raise TaskError(f"augment: expected a TaskFamily, got {type(family).__name__}")
        self.base = family
        self.reparam = _check_range("reparam", reparam)
        self.loss_scale = _check_range("loss_scale", loss_scale)
        self.grad_scale = _check_range("grad_scale", grad_scale)
        self.batch_fraction = _check_range("batch_fraction", batch_fraction, upper=1.0)
        self.name = f"{family.name}+aug"
        key = jax.random.PRNGKey(0)
        self._param_shapes = jax.eval_shape(lambda k: family.task(family.sample(k)).init(k), key)
        self._batch_rows = None
        if self.batch_fraction is not None:
            batch = jax.eval_shape(lambda k: family.task(family.sample(k)).sample_batch(k), key)
            rows = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(batch)}
            if len(rows) != 1 or None in rows:
                raise TaskError(f"augment: batch_fraction needs batches with one leading example "
                                f"axis; {family.name}'s batch leaves have shapes "
                                f"{[x.shape for x in jax.tree.leaves(batch)]}")
            self._batch_rows = rows.pop()

    def options(self) -> dict:
        return {k: getattr(self, k) for k in OPTIONS}

    def __getattr__(self, name):
        # everything else (datasets, default_cfg's helpers, describe, ...) is the base family's
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def sample(self, key):
        k_base, k_s, k_c, k_k, k_b = jax.random.split(key, 5)
        leaves, treedef = jax.tree.flatten(self._param_shapes)
        if self.reparam is not None:
            s = _log_uniform(k_s, self.reparam, (len(leaves),))
            scales = jax.tree.unflatten(treedef, [s[i] for i in range(len(leaves))])
        else:
            scales = jax.tree.unflatten(treedef, [jnp.ones(())] * len(leaves))
        one = jnp.ones((), jnp.float32)
        b = jnp.asarray(self._batch_rows or 1, jnp.int32)
        if self.batch_fraction is not None:
            f = _log_uniform(k_b, self.batch_fraction)
            b = jnp.clip(jnp.round(f * self._batch_rows), 1, self._batch_rows).astype(jnp.int32)
        return {"base": self.base.sample(k_base), "s": scales,
                "c": _log_uniform(k_c, self.loss_scale) if self.loss_scale else one,
                "k": _log_uniform(k_k, self.grad_scale) if self.grad_scale else one,
                "b": b}

    def wrap(self, base_cfg, s=None, c=1.0, k=1.0, b=None) -> dict:
        """A fixed augmented cfg around ``base_cfg`` (s: a tree like params, default ones)."""
        s = s if s is not None else jax.tree.map(lambda _: jnp.ones(()), self._param_shapes)
        return {"base": base_cfg, "s": s, "c": jnp.asarray(c, jnp.float32),
                "k": jnp.asarray(k, jnp.float32),
                "b": jnp.asarray(b if b is not None else (self._batch_rows or 1), jnp.int32)}

    def default_cfg(self, **kwargs):
        return self.wrap(self.base.default_cfg(**kwargs))

    def task(self, cfg) -> Task:
        base = self.base.task(cfg["base"])
        s, c, k = cfg["s"], cfg["c"], cfg["k"]

        def to_p(q):
            return jax.tree.map(lambda x, si: x * si.astype(x.dtype), q, s)

        def init(key):
            return jax.tree.map(lambda p, si: p / si.astype(p.dtype), base.init(key), s)

        def reduce_batch(batch):
            if self.batch_fraction is None:
                return batch
            idx = jnp.arange(self._batch_rows) % cfg["b"]
            return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch)

        def loss(q, key, batch):
            q = _scale_grad(q, k) if self.grad_scale is not None else q
            return c * base.loss(to_p(q), key, reduce_batch(batch))

        def eval_loss(q, split="validation"):
            return c * base.eval_loss(to_p(q), split)

        def expected_loss(q):
            # a batch of b distinct examples repeated has the same expectation as the base batch
            return c * base.expected_loss(to_p(q))

        return Task(name=base.name, init=init, loss=loss, sample_batch=base.sample_batch,
                    normalizer=lambda l: base.normalizer(l / c),
                    eval_loss=None if base.eval_loss is None else eval_loss,
                    expected_loss=None if base.expected_loss is None else expected_loss)


def augmented(family: TaskFamily, **options) -> TaskFamily:
    """``family`` wrapped by :class:`AugmentedFamily` with ``options`` (keys of :data:`OPTIONS`);
    ``family`` itself when every option is off."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TaskError(f"augment: unknown option(s) {unknown}; valid: {list(OPTIONS)}")
    if all(v is None for v in options.values()):
        return family
    return AugmentedFamily(family, **options)


__all__ = ["AugmentedFamily", "augmented", "OPTIONS"]
