"""Population sharding: spread the estimator's particles over all devices (and hosts).

What: a 1-D device mesh with axis "pop" over every global device, and one rule for
where each array lives:
    leaf with ndim >= 1 and shape[0] % num_devices == 0  ->  P("pop")  (axis 0 split)
    anything else (scalars, theta, meta-optimizer state) ->  P()       (replicated)

Why this is enough: every estimator keeps its population on axis 0 of every state leaf
(estimators.py) and is written with vmap over that axis, so after ``jax.jit`` with these
shardings XLA's SPMD partitioner runs each device's slice of the population locally and
turns the estimator's sum over particles (the ES/PES tensordot, the BPTT mean) into a
partial sum per device plus one all-reduce. Theta and the meta-optimizer are replicated,
so every device applies the same meta-update. Multi-host needs nothing more: after
``jax.distributed.initialize`` the mesh spans all processes' devices (distributed.py).

Random numbers do not depend on the sharding: jax's threefry is partitionable
(``jax_threefry_partitionable``, on by default in jax 0.10), so a run on N devices draws
the same perturbations and batches as on one and differs only by float round-off in
the cross-device sums (tests/test_sharding.py measures it).
"""
from __future__ import annotations

import warnings

import jax
import numpy as np
from chex import ArrayTree as PyTree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "pop"


def population_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "pop" over ``devices`` (default: all global devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (AXIS,))


def spec_for(shape, num_devices: int) -> P:
    """P("pop") when the leading axis splits evenly over the devices, else P()."""
    if len(shape) >= 1 and shape[0] % num_devices == 0:
        return P(AXIS)
    return P()


def sharding_for(mesh: Mesh, x) -> NamedSharding:
    return NamedSharding(mesh, spec_for(np.shape(x), mesh.size))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def population_shardings(mesh: Mesh, tree: PyTree) -> PyTree:
    """Shardings by the rule for every leaf of a population-leading tree (arrays or
    ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: sharding_for(mesh, x), tree)


def train_state_shardings(mesh: Mesh, state) -> PyTree:
    """Shardings for a TrainState: est_state by the rule, everything else replicated."""
    rep = replicated(mesh)
    return state._replace(step=rep, theta=jax.tree.map(lambda _: rep, state.theta),
                          meta_opt_state=jax.tree.map(lambda _: rep, state.meta_opt_state),
                          est_state=population_shardings(mesh, state.est_state), key=rep)


def make_constrain(mesh: Mesh):
    """``constrain(tree)``: a sharding constraint by the rule on every leaf; meant for use
    inside jit on trees that carry the population on axis 0 (GradientEstimator.constrain)."""
    def constrain(tree):
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding_for(mesh, x)),
                            tree)
    return constrain


def warn_if_uneven(population: int, mesh: Mesh) -> bool:
    """One warning line when ``population`` particles do not split over the mesh's devices.
    Returns True when they do."""
    if population % mesh.size == 0:
        return True
    warnings.warn(f"population of {population} particles is not divisible by {mesh.size} devices: "
                  "it is replicated (every device runs all particles); choose num_pairs so that "
                  f"2 * num_pairs is a multiple of {mesh.size}", stacklevel=2)
    return False


def place(host_tree: PyTree, shardings: PyTree) -> PyTree:
    """Put a host (numpy) tree onto the mesh with ``shardings``. Every process passes the
    same full arrays; each fills only the shards of its own devices, so this works with
    several processes (make_array_from_callback) as well as with one."""
    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
    return jax.tree.map(one, host_tree, shardings)


def gather(tree: PyTree, mesh: Mesh) -> PyTree:
    """The full value of every leaf as numpy on every process. A collective: with several
    processes all of them must call it at the same point. One replicating jit for the
    whole tree (what multihost_utils.process_allgather does leaf by leaf)."""
    rep = jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), rep)
