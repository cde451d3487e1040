"""The outer loop: one jitted outer step, periodic evaluation, NaN-safe updates.

The population is sharded over a device mesh (meta_train/sharding.py): ``init`` and
``outer_step`` are jitted with explicit shardings, the estimator's population-leading
trees are constrained onto the "pop" axis, and the meta-gradient's sum over particles
becomes an all-reduce; theta and the meta-optimizer state stay replicated. The same
config runs unchanged on one device, N local devices or N hosts (jax.distributed)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import chex
import optax
from chex import ArrayTree as PyTree

import learned_opt
import tasks
from learned_opt.loss_guard import loss_guard
from learned_opt.trajectory_guard import DEFAULT_CHECK_EVERY, trajectory_guard
from learned_opt.optax_adapter import as_optax
from meta_train import sharding
from meta_train.config import TrainConfig
from meta_train.estimators import MultiFamily, make_estimator
from meta_train.unroll import learned_optimizer_unroll, normalised_loss
from tasks import training


class TrainState(NamedTuple):
    step: jax.Array            # int32 outer step
    theta: PyTree              # meta-parameters
    meta_opt_state: PyTree
    est_state: PyTree          # PES particles and accumulators
    key: jax.Array             # raw uint32 PRNG key


def periodic_eval_curves(lopt, family, theta, keys, num_steps, guard=None, guard_kind="step",
                         check_every=DEFAULT_CHECK_EVERY):
    """Meta-training's periodic evaluation: one held-out task per key (``family.sample`` of the
    key's first split, trained from its second), trained with ``theta`` for ``num_steps`` by the
    same rollout as every report (``tasks.training.train``, through ``as_optax``; behind the
    guard of ``guard_kind`` with fallback ``guard`` when given). Returns normalised training losses clipped as the
    meta-loss is, shape (len(keys), num_steps). Vmapped over tasks, scanned over steps."""
    tx = as_optax(lopt, theta, num_steps)
    if guard is not None and guard_kind == "trajectory":
        tx = trajectory_guard(tx, guard, check_every=check_every, num_steps=num_steps)
    elif guard is not None:
        tx = loss_guard(tx, guard)

    def one(key):
        k_cfg, k_train = jax.random.split(key)
        task = family.task(family.sample(k_cfg))
        run = training.train(task, tx, k_train, num_steps, guarded=guard is not None)
        return normalised_loss(task, run.losses)

    return jax.vmap(one)(keys)


def make_families(entries) -> list:
    """Each ``FamilyEntry``'s family, built and wrapped in its augmentation."""
    return [tasks.augmented(tasks.get_family(e.family, **e.kwargs), **e.augment) for e in entries]


def initial_theta(config: TrainConfig, lopt) -> PyTree | None:
    """The meta-parameters named by ``config.init_from`` (a file or shipped name; fine-tuning), or
    None for a fresh init. The file's architecture and meta-parameter shapes must be this run's
    (one clear error otherwise); options that change no shape (``cosine_floor``, ``lr``, ...) may
    differ, so a rule can be fine-tuned under a new one."""
    if not config.init_from:
        return None
    path = learned_opt.shipped.resolve(config.init_from)
    try:
        theta = learned_opt.load_theta(path, lopt, same_config=False)
    except learned_opt.CheckpointError as e:
        msg, mismatch, _ = str(e).partition("; use learned_opt.load")
        hint = "; set architecture and lopt_config to the ones it was saved with" if mismatch else ""
        raise learned_opt.CheckpointError(f"init_from={config.init_from!r}: {msg}{hint}") from None
    return jax.tree.map(jnp.asarray, theta)


class MetaTrainer:
    """Builds the family, optimizer, Unroll, estimator and meta-optimizer from a TrainConfig.

    ``mesh``: the 1-D "pop" mesh to shard the population over (default: all global
    devices, see sharding.population_mesh)."""

    def __init__(self, config: TrainConfig, mesh=None):
        self.config = config
        self.mesh = sharding.population_mesh() if mesh is None else mesh
        self.entries = config.family_entries()
        self.families = make_families(self.entries)
        self.family = self.families[0]
        self.lopt = learned_opt.make(config.architecture, config.lopt_config)
        self.theta0 = initial_theta(config, self.lopt)
        self.guard = optax.adam(config.guard_lr) if config.guard_lr > 0 else None
        self.unrolls = [learned_optimizer_unroll(
            self.lopt, fam, (config.min_episode_length, config.max_episode_length),
            guard=self.guard, log_loss=config.meta_loss == "log", guard_kind=config.guard_kind,
            check_every=config.guard_check_every, hide_length=config.hide_length)
            for fam in self.families]
        self.unroll = self.unrolls[0]
        estimators = [make_estimator(config.replace(num_pairs=e.num_pairs or config.num_pairs), u)
                      for e, u in zip(self.entries, self.unrolls)]
        self.estimator = (estimators[0] if len(estimators) == 1 else
                          MultiFamily(estimators, [e.weight for e in self.entries],
                                      [e.label for e in self.entries],
                                      balance=config.family_balance == "norm"))
        lr = config.meta_lr
        if config.meta_lr_final is not None:    # cosine decay meta_lr -> meta_lr_final over the run
            lr = optax.cosine_decay_schedule(config.meta_lr, max(1, config.outer_steps),
                                             alpha=config.meta_lr_final / config.meta_lr)
        base = optax.adam(lr) if config.meta_optimizer == "adam" else optax.sgd(lr)
        self.meta_opt = optax.chain(optax.clip_by_global_norm(config.grad_clip), base)
        self.estimator.constrain = sharding.make_constrain(self.mesh)
        if self.mesh.size == 1 and self.mesh.devices.flat[0].platform == "cpu":
            # two independent vmapped parts keep both cores busy (benchmarks/reference_pes.py: +7-17%)
            self.estimator.vmap_groups = 2
        if self.mesh.size > 1:
            for e in self.entries:
                sharding.warn_if_uneven(2 * (e.num_pairs or config.num_pairs), self.mesh)
        self.state_shardings = sharding.train_state_shardings(self.mesh, jax.eval_shape(self._init))
        rep = sharding.replicated(self.mesh)
        self._init_jit = jax.jit(self._init, out_shardings=self.state_shardings)
        self.outer_step = jax.jit(self._outer_step, in_shardings=(self.state_shardings,),
                                  out_shardings=(self.state_shardings, rep))
        # Evaluation: theta replicated, the held-out tasks split over devices when they divide.
        self.evaluate = jax.jit(self._evaluate, in_shardings=(self.state_shardings.theta,),
                                out_shardings=rep)

    def init(self) -> TrainState:
        """The initial state, placed on the mesh (population sharded)."""
        return self._init_jit()

    def place(self, host_state: TrainState) -> TrainState:
        """A host (numpy) TrainState, e.g. loaded from a checkpoint, placed on the mesh.
        With several processes each must pass the same full state."""
        return sharding.place(host_state, self.state_shardings)

    def gather(self, state: TrainState) -> TrainState:
        """The state as numpy on every process (a collective with several processes)."""
        return sharding.gather(state, self.mesh)

    def _init(self) -> TrainState:
        key = jax.random.PRNGKey(self.config.seed)
        k_theta, k_est, key = jax.random.split(key, 3)
        theta = self.lopt.init(k_theta) if self.theta0 is None else self.theta0
        return TrainState(jnp.zeros((), jnp.int32), theta, self.meta_opt.init(theta),
                          self.estimator.init(theta, k_est), key)

    def _outer_step(self, state: TrainState):
        key, k_est = jax.random.split(state.key)
        grad, est_state, metrics = self.estimator.estimate(state.theta, state.est_state, k_est)
        chex.assert_trees_all_equal_shapes_and_dtypes(grad, state.theta)   # at trace time
        updates, meta_opt_state = self.meta_opt.update(grad, state.meta_opt_state, state.theta)
        new_theta = optax.apply_updates(state.theta, updates)
        ok = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_theta)]))
        # NaN-safe: a non-finite update leaves theta and the meta-optimizer untouched.
        theta = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_theta, state.theta)
        meta_opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), meta_opt_state,
                                      state.meta_opt_state)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grad), update_skipped=~ok)
        return TrainState(state.step + 1, theta, meta_opt_state, est_state, key), metrics

    def _evaluate(self, theta):
        """Mean normalised training loss over ``eval_steps`` on fixed held-out tasks of each
        family (with several families: each one's under "<label>/", and their mean)."""
        keys = self.estimator.constrain(tasks.periodic_eval_keys(self.config.eval_tasks))
        out = {}
        for e, fam in zip(self.entries, self.families):
            losses = periodic_eval_curves(self.lopt, fam, theta, keys,
                                          self.config.eval_steps, guard=self.guard,
                                          guard_kind=self.config.guard_kind,
                                          check_every=self.config.guard_check_every)
            out[e.label] = {"eval_mean_loss": jnp.mean(losses),
                            "eval_final_loss": jnp.mean(losses[:, -1])}
        if len(out) == 1:
            return next(iter(out.values()))
        metrics = {f"{label}/{k}": v for label, m in out.items() for k, v in m.items()}
        for k in ("eval_mean_loss", "eval_final_loss"):
            metrics[k] = jnp.mean(jnp.stack([m[k] for m in out.values()]))
        return metrics
