"""Checkpoint I/O for meta-parameters theta (format ``learned-opt-theta``, v1).

A checkpoint is one ``.npz`` archive holding

* ``__header__``: a JSON string ``{"format", "version", "architecture", "config",
  "leaves": [{"path", "shape", "dtype"}...], "treedef", "sha256", "metadata", ...}``
* ``theta/<path>``: one array per leaf of theta, keyed by its tree path
  (e.g. ``theta/mlp/linear_0/w``).

It is an archive of ``learned_opt.files`` (path-keyed leaves, sha256, version), written
atomically, so a crash leaves either the old file or the new one. ``load`` rebuilds the
optimizer from the registry, so the caller need not know its class; the tree
structure is taken from ``lopt.init`` and checked leaf by leaf against the file.
Every problem a user can hit raises :class:`CheckpointError` with a one-line message.
"""
from __future__ import annotations

import datetime
import json
from typing import NamedTuple

import jax
import numpy as np
from chex import ArrayTree as PyTree

from learned_opt import files
from learned_opt.base import (CheckpointError, LearnedOptError, LearnedOptimizer,
                              architectures, config_from_dict, config_to_dict)
from learned_opt.shipped import resolve

FORMAT = "learned-opt-theta"
VERSION = 1
LEAF_PREFIX = "theta/"



def _template(lopt: LearnedOptimizer):
    """Shapes/dtypes/treedef of theta, without computing it."""
    return jax.eval_shape(lopt.init, jax.random.PRNGKey(0))


def _describe(lopt: LearnedOptimizer) -> str:
    return f"architecture {lopt.architecture!r} with config {json.dumps(config_to_dict(lopt.config))}"


_HINT = "use the optimizer the theta was made for"


# ----------------------------------------------------------------------------- save
def save(path: str, lopt: LearnedOptimizer, theta: PyTree, metadata: dict | None = None) -> None:
    """Write ``theta`` of ``lopt`` to ``path`` atomically, with JSON-able ``metadata``
    (e.g. ``{"outer_steps": 1000, "family": "mlp_digits"}``)."""
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"metadata must be a dict, got {type(metadata).__name__}")
    files.check_leaves([(p, t.shape, t.dtype) for p, t in files.leaves_with_paths(_template(lopt))],
                       [(p, np.shape(x), files.dtype_of(x)) for p, x in files.leaves_with_paths(theta)],
                       "theta to save", _describe(lopt), _HINT, CheckpointError)
    files.write_archive(path, theta, fmt=FORMAT, version=VERSION, prefix=LEAF_PREFIX, error=CheckpointError,
                        fields={"architecture": lopt.architecture,
                                "config": config_to_dict(lopt.config),
                                "metadata": metadata or {},
                                "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                "jax_version": jax.__version__})


# ----------------------------------------------------------------------------- load
def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate the header and raw arrays (no optimizer needed)."""
    return files.read_archive(path, fmt=FORMAT, version=VERSION, prefix=LEAF_PREFIX,
                              what="learned-optimizer checkpoint", writer="learned_opt.save",
                              error=CheckpointError)


def read_header(path: str) -> dict:
    """The validated JSON header of a checkpoint (architecture, config, metadata, ...)."""
    return _read(path)[0]


def _build_theta(path: str, header: dict, arrays: dict, lopt: LearnedOptimizer) -> PyTree:
    return files.tree_from_archive(_template(lopt), header, arrays, f"checkpoint {path}",
                                   _describe(lopt), _HINT, CheckpointError)


def _check_header(path: str, header: dict) -> None:
    """The header fields the loaders read have their types (they are outside the checksum)."""
    for field in ("config", "metadata"):
        if not isinstance(header.get(field) or {}, dict):
            raise CheckpointError(f"{path} has a corrupt header ({field} is not an object); "
                                  "restore the file or re-save it")
    if not isinstance(header.get("architecture"), str):
        raise CheckpointError(f"{path} has a corrupt header (architecture "
                              f"{header.get('architecture')!r} is not a name); restore the file or re-save it")


def _optimizer_from_header(path: str, header: dict) -> LearnedOptimizer:
    _check_header(path, header)
    arch = header.get("architecture")
    known = architectures()
    if arch not in known:
        raise CheckpointError(
            f"{path} holds architecture {arch!r}, which is not registered here (known: "
            f"{sorted(known)}); import the module that defines it before loading")
    cls = known[arch]
    try:
        return cls(config_from_dict(cls.Config, header.get("config") or {}))
    except (LearnedOptError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path} has a config that {cls.__name__} cannot use ({str(e).splitlines()[0] if str(e) else e!r}); "
            "the checkpoint is from an incompatible version of this architecture") from None


class Loaded(NamedTuple):
    """What :func:`load` returns: unpacks as ``lopt, theta, metadata``, and is ready for optax."""
    lopt: LearnedOptimizer
    theta: PyTree
    metadata: dict

    def as_optax(self, num_steps: int | None = None):
        """The optimizer as an optax ``GradientTransformationExtraArgs`` (see ``as_optax``);
        ``num_steps``: the run's length, for optimizers conditioned on the fraction of training."""
        return self.lopt.as_optax(self.theta, num_steps)

    def guarded(self, fallback=None, num_steps: int | None = None):
        """Loss-guarded (LGL2O) version with ``fallback`` (default Adam 1e-3); pass
        ``value_fn`` to its update (see ``learned_opt.loss_guard``)."""
        from learned_opt.loss_guard import guarded
        return guarded(self.lopt, self.theta, fallback, num_steps)

    def trajectory_guarded(self, fallback=None, **kwargs):
        """Trajectory-guarded version: ``fallback`` (default Adam 1e-3) runs alongside and the run
        continues from its parameters whenever it trails by more than the tolerance at a check;
        pass ``value_fn`` and ``grad_fn`` to its update (see ``learned_opt.trajectory_guard``)."""
        from learned_opt.trajectory_guard import trajectory_guarded
        return trajectory_guarded(self.lopt, self.theta, fallback, **kwargs)


def load(path: str) -> Loaded:
    """Restore ``(lopt, theta, metadata)`` from a checkpoint file, or from the shipped
    optimizer of that name (``learned_opt.load("mlp")``, see ``learned_opt.shipped``); the
    optimizer is rebuilt from the registry.

        tx = learned_opt.load("mlp").as_optax()          # any optax training loop
    """
    path = resolve(path)
    header, arrays = _read(path)
    lopt = _optimizer_from_header(path, header)
    return Loaded(lopt, _build_theta(path, header, arrays, lopt), dict(header.get("metadata") or {}))


def load_theta(path: str, lopt: LearnedOptimizer, same_config: bool = True) -> PyTree:
    """Load theta for the given optimizer; its architecture and config must match the file's
    (``same_config=False``: only its architecture and every meta-parameter's shape, e.g. to
    fine-tune a rule under an option that adds no meta-parameter, or under one whose new
    meta-parameters start as a no-op: ``LearnedOptimizer.adapt_theta``)."""
    header, arrays = _read(path)
    _check_header(path, header)
    if header.get("architecture") != lopt.architecture:
        raise CheckpointError(
            f"{path} holds a {header.get('architecture')!r} optimizer, not {lopt.architecture!r}; "
            "use learned_opt.load(path) to rebuild the optimizer it was saved with")
    if not same_config:
        try:
            return _build_theta(path, header, arrays, lopt)
        except CheckpointError:
            # a rule with inputs the file's lacks, which start as a no-op (adapt_theta)
            source = _optimizer_from_header(path, header)
            adapted = lopt.adapt_theta(_build_theta(path, header, arrays, source), source)
            if adapted is None:
                raise
            want = _template(lopt)
            if jax.tree.structure(adapted) != jax.tree.structure(want) or any(
                    np.shape(a) != w.shape for a, w in zip(jax.tree.leaves(adapted), jax.tree.leaves(want))):
                raise
            return adapted
    mine = json.loads(json.dumps(config_to_dict(lopt.config), default=files.json_default))
    # the file's config as its architecture reads it (options added since it was saved: defaults)
    theirs = json.loads(json.dumps(config_to_dict(_optimizer_from_header(path, header).config),
                                   default=files.json_default))
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        detail = ", ".join(f"{k}: file {theirs.get(k)!r} vs optimizer {mine.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{path} was saved with a different {lopt.architecture!r} config ({detail}); "
            "use learned_opt.load(path) to rebuild the matching optimizer")
    return _build_theta(path, header, arrays, lopt)
