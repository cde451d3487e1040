"""Meta-train the same learned optimizer with each outer estimator and compare them on
held-out tasks, against outer steps and against wall time.

    python benchmarks/compare_estimators.py [--config default] [--outer-steps 600] [--out runs/estimators]

PES, truncated ES and truncated BPTT get --outer-steps; full-episode ES gets as many
inner steps in all (each of its estimates runs whole episodes of max_episode_length).
Runs that already exist in --out are resumed or reused. Writes estimators.png (held-out
mean normalised loss vs outer step and vs seconds) and prints a table.

    python benchmarks/compare_estimators.py --variance [--config general] [--estimators pes,nres]

measures instead the variance of one estimate at equal compute (same particles, same truncation)
at a fixed theta (the optimizer's initialisation): each estimator runs ``--warmup`` truncations
(past its first, staggered episodes), then ``--samples`` more, and the per-coordinate variance of
those estimates, summed over theta, is printed with its ratio to the first estimator's.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from meta_train.config import get_config  # noqa: E402
from learned_opt.files import read_jsonl as read_metrics  # noqa: E402
from meta_train.run import train  # noqa: E402

LABELS = {"pes": "PES", "tes": "truncated ES", "tbptt": "truncated BPTT", "full_es": "full-episode ES",
          "nres": "NRES"}


def estimate_variance(config, warmup: int, samples: int, seed: int = 0) -> tuple[float, float]:
    """(sum over theta of the per-coordinate variance of one estimate, mean squared norm of the
    mean estimate) for ``config``'s estimator at its initial theta."""
    import jax
    import numpy as np
    from meta_train.trainer import MetaTrainer
    tr = MetaTrainer(config)
    theta = tr.lopt.init(jax.random.PRNGKey(seed))
    state = tr.estimator.init(theta, jax.random.PRNGKey(seed + 1))
    step = jax.jit(tr.estimator.estimate)
    flat = []
    for i in range(warmup + samples):
        g, state, _ = step(theta, state, jax.random.PRNGKey(1000 + i))
        if i >= warmup:
            flat.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]))
    flat = np.stack(flat)
    return float(flat.var(axis=0).sum()), float(np.sum(flat.mean(axis=0) ** 2))


def eval_points(records):
    """(step, seconds, eval_mean_loss) for every evaluation; seconds from the nearest
    logged training step at or before it."""
    times = {r["step"]: r["time_s"] for r in records if "time_s" in r}
    out = []
    for r in records:
        if "eval_mean_loss" in r:
            t = max((times[s] for s in times if s <= r["step"]), default=0.0)
            out.append((r["step"], t, r["eval_mean_loss"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--outer-steps", type=int, default=600)
    ap.add_argument("--estimators", default="pes,tes,tbptt,full_es")
    ap.add_argument("--out", default="runs/estimators")
    ap.add_argument("--variance", action="store_true", help="measure estimate variance instead")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    if args.variance:
        from learned_opt import compile_cache
        compile_cache.enable()
        names = args.estimators.split(",") if args.estimators != ap.get_default("estimators") else ["pes", "nres"]
        base = None
        print(f"config {args.config}: variance of one estimate at the initial theta, {args.warmup} "
              f"truncations of warm-up, {args.samples} estimates")
        for name in names:
            cfg = get_config(args.config).replace(estimator=name)
            var, sq = estimate_variance(cfg, args.warmup, args.samples)
            base = base or var
            print(f"{LABELS[name]:18s} total variance {var:.4g} (x{var / base:.2f} of "
                  f"{LABELS[names[0]]}), |mean estimate|^2 {sq:.4g}", flush=True)
        return

    results = {}
    for name in args.estimators.split(","):
        cfg = get_config(args.config).replace(estimator=name, outer_steps=args.outer_steps,
                                              eval_every=max(1, args.outer_steps // 6))
        if name == "full_es":
            steps = max(1, args.outer_steps * cfg.truncation_length // cfg.max_episode_length)
            cfg = cfg.replace(outer_steps=steps, eval_every=max(1, steps // 6), log_every=1)
        out = os.path.join(args.out, name)
        done = read_metrics(os.path.join(out, "metrics.jsonl"))
        if not any(r.get("step") == cfg.outer_steps and "eval_mean_loss" in r for r in done):
            print(f"meta-training with {LABELS[name]} -> {out}", flush=True)
            train(cfg, out, resume=os.path.exists(os.path.join(out, "config.json")), progress=True)
        records = read_metrics(os.path.join(out, "metrics.jsonl"))
        inner = (2 * cfg.num_pairs * (cfg.max_episode_length if name == "full_es" else cfg.truncation_length)
                 * (1.5 if name == "tes" else 1))
        results[name] = (eval_points(records), inner)

    from meta_train.evaluation.plots import plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    print(f"{'estimator':18s} {'outer steps':>11s} {'inner steps':>11s} {'seconds':>8s}  held-out loss start -> end")
    for name, (pts, inner) in results.items():
        steps, secs, losses = zip(*pts)
        axes[0].plot([s * inner for s in steps], losses, "o-", label=LABELS[name])
        axes[1].plot(secs, losses, "o-", label=LABELS[name])
        print(f"{LABELS[name]:18s} {steps[-1]:11d} {int(steps[-1] * inner):11d} {secs[-1]:8.0f}  "
              f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    axes[0].set(xlabel="inner steps (all particles)", ylabel="held-out mean normalised loss",
                title="per unit of inner work")
    axes[1].set(xlabel="wall-clock seconds", title="per second (this machine)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "estimators.png")
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()
