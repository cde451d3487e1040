"""Throughput of PES meta-training and the cost of a learned-optimizer step, as ratios
against baselines measured in the same process (so they survive a noisy machine).

    python benchmarks/throughput.py [--config default] [--repeats 3]

1. PES inner task-steps/s for the config (2 * num_pairs particles x K steps per outer step)
   vs the same population trained with Adam in one vmapped lax.scan (the cheapest way to do
   the same inner work; the gap is the learned optimizer and the estimator).
2. One learned-optimizer step vs one Adam step on the same model (a scanned training run
   of the family's default task through optax), time per step and ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import optax  # noqa: E402

from meta_train.evaluation import curves as ev  # noqa: E402
from meta_train.config import get_config  # noqa: E402
from meta_train.trainer import MetaTrainer  # noqa: E402


def best_time(fn, repeats):
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved_best(fns, repeats):
    """Best wall time of each of ``fns`` over ``repeats`` rounds, each round running every one
    once in turn: a slow spell of a shared machine then slows every optimizer's round alike
    instead of one optimizer's whole measurement (which moved ratios by up to 2x)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--outer-steps", type=int, default=20, help="outer steps per timing")
    ap.add_argument("--task-steps", type=int, default=500, help="steps per single-task timing")
    args = ap.parse_args()

    cfg = get_config(args.config)
    tr = MetaTrainer(cfg)
    n_particles = 2 * cfg.num_pairs
    inner_per_outer = n_particles * cfg.truncation_length
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
          f"config {args.config}: {n_particles} particles x K={cfg.truncation_length}")

    state = tr.init()

    def pes():
        s = state
        for _ in range(args.outer_steps):
            s, m = tr.outer_step(s)
        jax.block_until_ready(s.theta)

    t_pes = best_time(pes, args.repeats)
    pes_rate = args.outer_steps * inner_per_outer / t_pes

    # Reference: the same number of inner steps with Adam, population vmapped, one scan.
    keys = jax.random.split(jax.random.PRNGKey(1), n_particles)
    cfgs = jax.vmap(tr.family.sample)(keys)
    n_ref = args.outer_steps * cfg.truncation_length
    run = jax.jit(jax.vmap(lambda c, k: ev.run_task(tr.family.task(c), optax.adam(1e-3), k, n_ref)))
    t_ref = best_time(lambda: jax.block_until_ready(run(cfgs, keys)), args.repeats)
    ref_rate = n_particles * n_ref / t_ref
    print(f"PES meta-training:          {pes_rate:10.0f} inner task-steps/s")
    print(f"Adam, same population:      {ref_rate:10.0f} inner task-steps/s (vmapped scan)")
    print(f"  ratio PES / Adam-population: {pes_rate / ref_rate:.3f}")

    # One task, learned optimizer vs Adam through optax.
    task = tr.family.task(jax.tree.map(lambda x: x[0], cfgs))
    key = jax.random.PRNGKey(0)
    n = args.task_steps
    lo_tx = tr.lopt.as_optax(state.theta)
    run_lo = jax.jit(lambda k: ev.run_task(task, lo_tx, k, n))
    run_adam = jax.jit(lambda k: ev.run_task(task, optax.adam(1e-3), k, n))
    t_lo = best_time(lambda: jax.block_until_ready(run_lo(key)), args.repeats)
    t_ad = best_time(lambda: jax.block_until_ready(run_adam(key)), args.repeats)
    n_params = sum(x.size for x in jax.tree.leaves(task.init(key)))
    print(f"one task ({tr.family.name}, {n_params} parameters), {n} steps incl. forward/backward:")
    print(f"  Adam step:             {1e6 * t_ad / n:8.1f} us")
    print(f"  learned-opt step:      {1e6 * t_lo / n:8.1f} us")
    print(f"  ratio learned / Adam:  {t_lo / t_ad:.2f}x")


if __name__ == "__main__":
    main()
