"""Weight averaging ("soup") of learned optimizers fine-tuned from one starting point.

Given optimizer files :math:`\\theta_1, \\dots, \\theta_n` of the same architecture and config and
weights :math:`w_i \\ge 0`, the soup is the optimizer with meta-parameters

.. math:: \\bar\\theta = \\sum_i \\frac{w_i}{\\sum_j w_j}\\, \\theta_i ,

leaf by leaf (computed in float64, stored in each leaf's dtype). It is meaningful when the
members start from one :math:`\\theta_0` and move little (fine-tunes of one optimizer with
different meta-training seeds): then :math:`\\bar\\theta - \\theta_0` is the mean of the members'
updates, whose seed-to-seed noise averages out (Wortsman et al. 2022, "Model soups", for
networks fine-tuned from one pre-trained model). Averaging unrelated optimizers (different
starting points) is allowed but rarely gives a working rule; :func:`spread` reports how far
the members are from their mean, relative to its norm, so a caller can see which case it is.

    lopt soup a.npz b.npz c.npz --out soup.npz
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import numpy as np

from learned_opt import checkpoint
from learned_opt.base import CheckpointError, config_to_dict
from learned_opt.shipped import resolve


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(resolve(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights(n: int, weights: Sequence[float] | None) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,):
        raise CheckpointError(f"soup: {len(w)} weights for {n} optimizer files; give one weight per file")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise CheckpointError(f"soup: weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


def average(paths: Sequence[str], weights: Sequence[float] | None = None) -> checkpoint.Loaded:
    """The soup of the optimizer files ``paths`` (see the module docstring): ``(lopt, theta,
    metadata)`` with ``metadata["soup"]`` naming each member (path, sha256, label, weight).
    Raises :class:`CheckpointError` (one line) when there are fewer than two files or their
    architectures or configs differ."""
    paths = list(paths)
    if len(paths) < 2:
        raise CheckpointError(f"soup: needs at least two optimizer files, got {len(paths)}")
    w = _weights(len(paths), weights)
    members = [checkpoint.load(p) for p in paths]
    first = members[0].lopt
    for p, m in zip(paths[1:], members[1:]):
        if m.lopt.architecture != first.architecture:
            raise CheckpointError(f"soup: {p} is a {m.lopt.architecture!r} optimizer and {paths[0]} a "
                                  f"{first.architecture!r} one; only one architecture can be averaged")
        a, b = config_to_dict(first.config), config_to_dict(m.lopt.config)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise CheckpointError(f"soup: {p} and {paths[0]} differ in config ({', '.join(diff)}); "
                                  "average only optimizers with the same config")

    def mean(*leaves):
        acc = sum(wi * np.asarray(x, dtype=np.float64) for wi, x in zip(w, leaves))
        return np.asarray(acc, dtype=np.asarray(leaves[0]).dtype)

    theta = jax.tree_util.tree_map(mean, *[m.theta for m in members])
    meta = {"soup": [{"path": p, "sha256": _sha256(p), "label": m.metadata.get("label"),
                      "weight": float(wi)} for p, m, wi in zip(paths, members, w)],
            "label": "soup of " + ", ".join(str(m.metadata.get("label") or p) for p, m in zip(paths, members))}
    return checkpoint.Loaded(first, theta, meta)


def spread(paths: Sequence[str]) -> float:
    """Root-mean-square distance of the members' theta from their mean, over the mean's norm
    (all leaves flattened): ~0.05 for fine-tunes of one optimizer, ~1 for unrelated ones."""
    thetas = [np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(checkpoint.load(p).theta)])
              for p in paths]
    stack = np.stack(thetas).astype(np.float64)
    centre = stack.mean(0)
    return float(np.sqrt(np.mean(np.sum((stack - centre) ** 2, axis=1))) / max(np.linalg.norm(centre), 1e-30))


def with_config(lopt, overrides: dict):
    """``lopt`` rebuilt with config fields ``overrides`` (e.g. test-time settings such as
    ``{"hypergrad": 0.1}``); an unknown field or a bad value is a one-line error."""
    from learned_opt.base import LearnedOptError, config_from_dict
    try:
        cfg = config_from_dict(type(lopt.config), {**config_to_dict(lopt.config), **overrides})
        return type(lopt)(cfg)
    except (LearnedOptError, TypeError, ValueError) as e:
        raise CheckpointError(f"soup: cannot set {overrides} on a {lopt.architecture!r} optimizer: "
                              f"{str(e).splitlines()[0] if str(e) else e!r}") from None


def save(path: str, paths: Sequence[str], weights: Sequence[float] | None = None,
         metadata: dict | None = None, config_overrides: dict | None = None) -> checkpoint.Loaded:
    """Write the soup of ``paths`` to ``path`` (atomically) and return it; ``metadata`` is added
    to the file's (e.g. a label or note); ``config_overrides``: config fields to change, which
    must leave the meta-parameters' shapes as they are (test-time settings; :func:`with_config`).
    One path with overrides re-saves that optimizer with them."""
    paths = list(paths)
    if len(paths) == 1 and config_overrides:
        one = checkpoint.load(paths[0])
        soup = checkpoint.Loaded(one.lopt, one.theta, {**one.metadata, "from": paths[0]})
        meta = dict(soup.metadata)
    else:
        soup = average(paths, weights)
        meta = {**soup.metadata, "soup_spread": spread(paths)}
    lopt = soup.lopt
    if config_overrides:
        lopt = with_config(lopt, config_overrides)
        shapes = lambda t: [np.shape(x) for x in jax.tree_util.tree_leaves(t)]
        if shapes(jax.eval_shape(lopt.init, jax.random.PRNGKey(0))) != shapes(soup.theta):
            raise CheckpointError(f"soup: setting {sorted(config_overrides)} changes the meta-parameters' "
                                  "shapes; only settings that add no meta-parameter can be changed")
        meta["config_overrides"] = dict(config_overrides)
    meta.update(metadata or {})
    checkpoint.save(path, lopt, soup.theta, meta)
    return checkpoint.Loaded(lopt, soup.theta, meta)
