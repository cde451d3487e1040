"""How much does each family of a multi-family config steer the meta-gradient?

A multi-family run combines the families' meta-gradient estimates as ``sum_f w_f g_f``
(``meta_train.estimators.MultiFamily``). This runs ``--estimates`` consecutive estimates of every
family at one fixed theta (the config's ``init_from`` or a given optimizer file; theta is not
updated) and prints, per family, the mean norm of one estimate ``|g_f|``, the norm of their mean
(the part that survives averaging), and the cosine between that mean and the combined mean
gradient: a family whose cosine is near 0 is not being learned from, whatever its weight.

    python benchmarks/family_gradients.py general --init-from checkpoints/general/optimizer.npz \
      --set 'lopt_config={"cosine_floor":0.1,"max_log_scale":3.0,"orthogonalize":true,"trained_horizon":2000,"input_names":["embed"]}'

Measured on the shipped ``general`` with that command (2026-12-02, its 7 families, 40 estimates,
4 min on 2 cores): ``|g_f|`` 151 for the 64-wide MLPs (cosine with the combined mean +0.87), 91 for
the 1-D convs (+0.46), 19-38 for the other MLPs and the quadratics (+0.11 to +0.20), 5.8 for the
character LSTMs (+0.03): the recurrent family barely enters the direction, whatever its weight.
``family_balance="norm"`` divides each ``g_f`` by its norm before weighting
(docs/experiments/nine_families).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="general", help="a named config with several families")
    p.add_argument("--init-from", default=None, help="optimizer file or shipped name for theta "
                   "(default: the config's init_from, else a fresh init)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, as for lopt train (e.g. lopt_config={...})")
    p.add_argument("--estimates", type=int, default=40)
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from meta_train.config import get_config, parse_override
    from meta_train.trainer import MetaTrainer

    cfg = get_config(args.config)
    overrides = dict(parse_override(s) for s in args.set)
    if args.init_from:
        overrides["init_from"] = args.init_from
    cfg = cfg.replace(**overrides)
    tr = MetaTrainer(cfg)
    est = tr.estimator
    if not hasattr(est, "estimators"):
        print(f"config {args.config!r} has one family; nothing to compare")
        return 1
    state = tr.init()

    @jax.jit
    def estimates(theta, est_state, key):
        keys = jax.random.split(key, len(est.estimators))
        out = [e.estimate(theta, s, k)[:2] for e, s, k in zip(est.estimators, est_state, keys)]
        return [g for g, _ in out], tuple(s for _, s in out)

    theta, est_state, key = state.theta, state.est_state, state.key
    flat = [[] for _ in est.labels]
    for i in range(args.estimates):
        key, k = jax.random.split(key)
        grads, est_state = estimates(theta, est_state, k)
        for j, g in enumerate(grads):
            flat[j].append(np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(g)]))
        print(f"\restimates {i + 1}/{args.estimates}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    means = [np.mean(f, axis=0) for f in flat]
    combined = sum(w * m for w, m in zip(est.weights, means))
    print(f"{'family':<14} {'weight':>6} {'mean |g_f|':>11} {'|mean g_f|':>11} {'cos(mean g_f, mean g)':>22}")
    rows = {}
    for label, w, f, m in zip(est.labels, est.weights, flat, means):
        norm = float(np.mean([np.linalg.norm(x) for x in f]))
        cos = float(m @ combined / (np.linalg.norm(m) * np.linalg.norm(combined) + 1e-30))
        rows[label] = {"weight": w, "mean_norm": norm, "norm_of_mean": float(np.linalg.norm(m)), "cos": cos}
        print(f"{label:<14} {w:6.3f} {norm:11.3f} {np.linalg.norm(m):11.3f} {cos:+22.3f}")
    print(json.dumps({"config": args.config, "estimates": args.estimates, "families": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
