"""Meta-training throughput on the field's reference configuration, with a roofline figure.

    python benchmarks/reference_pes.py [--tasks 8 16] [--outer-steps 20] [--repeats 3]

The reference configuration (the work ``../shared/peer`` times in google/learned_optimization):
MLP 40-32-10 (relu) on MNIST-1D, batch 128; per-parameter MLP optimizer (LOLv2, hidden 32, 32);
PES with N tasks x 2 antithetic particles, truncation K = 50, episodes log-uniform in
[100, 1000], Adam 3e-4 meta-optimizer. The same run from the CLI:

    lopt train --config default --no-report \\
      --set 'family_kwargs={"hidden_sizes": [32], "activations": ["relu"], "batch_size": 128}' \\
      --set num_pairs=8 --set truncation_length=50 --set min_episode_length=100 \\
      --set max_episode_length=1000 --set meta_lr=3e-4

For each N it prints: compile seconds (trainer construction + init + the first outer step,
which is what a user waits for), ms per outer step after it (best of ``--repeats`` timings of
``--outer-steps`` steps), inner task-steps/s (2 N K per outer step), and the achieved GFLOP/s
from XLA's own flop count of one vmapped inner step (forward, backward, features, the
optimizer's network) next to this machine's fp32 matmul GFLOP/s measured in the same run
(1024 x 1024, jitted): the fraction of the machine's dense-matmul peak the run reaches.
The throughput runs compile with the persistent compilation cache off. The compile table then
times the same first outer step in fresh processes sharing a new, empty cache directory: the
first one compiles (cold), the second loads the compiled programs (warm), as a user's second
``lopt train`` does (learned_opt.compile_cache).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

REFERENCE = dict(family="mnist1d_mlp",
                 family_kwargs={"hidden_sizes": [32], "activations": ["relu"], "batch_size": 128},
                 truncation_length=50, min_episode_length=100, max_episode_length=1000,
                 meta_lr=3e-4, eval_every=0)


def reference_config(num_tasks: int, **overrides):
    from meta_train.config import get_config
    return get_config("default").replace(**REFERENCE, num_pairs=num_tasks, **overrides)


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """This machine's jitted fp32 n x n matmul rate (best of ``repeats``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def flops_per_inner_step(trainer, state) -> float:
    """XLA's flop count of one inner step of the whole population, per particle."""
    est = trainer.estimator
    inner = state.est_state.inner
    n = jax.tree.leaves(inner)[0].shape[0]
    thetas = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state.theta)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    compiled = jax.jit(jax.vmap(est.unroll.step)).lower(thetas, inner, keys).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / n


def measure(num_tasks: int, outer_steps: int, repeats: int, **overrides) -> dict:
    from meta_train.trainer import MetaTrainer
    cfg = reference_config(num_tasks, **overrides)
    t0 = time.perf_counter()
    tr = MetaTrainer(cfg)
    state = tr.init()
    state, m = tr.outer_step(state)
    jax.block_until_ready(state.theta)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(outer_steps):
            state, m = tr.outer_step(state)
        jax.block_until_ready(state.theta)
        best = min(best, (time.perf_counter() - t) / outer_steps)
    inner = tr.estimator.inner_steps_per_estimate
    return {"num_tasks": num_tasks, "compile_s": compile_s, "ms_per_outer": 1e3 * best,
            "steps_per_s": inner / best, "flops_per_step": flops_per_inner_step(tr, state),
            "meta_loss": float(m["meta_loss"])}


def compile_probe(num_tasks: int) -> None:
    """In this (fresh) process: the seconds to build, init and take the first outer step with the
    persistent cache of $LOPT_COMPILE_CACHE; printed as the last line."""
    from learned_opt import compile_cache
    from meta_train.trainer import MetaTrainer
    compile_cache.enable()
    t0 = time.perf_counter()
    tr = MetaTrainer(reference_config(num_tasks))
    state, _ = tr.outer_step(tr.init())
    jax.block_until_ready(state.theta)
    print(f"{time.perf_counter() - t0:.3f}")


def cold_and_warm_compile(num_tasks: int) -> tuple[float, float]:
    """(cold, warm) first-outer-step seconds in two fresh processes sharing a new cache dir."""
    times = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, LOPT_COMPILE_CACHE=cache)
        for _ in range(2):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--compile-probe",
                                  str(num_tasks)], env=env, capture_output=True, text=True, check=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
    return times[0], times[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=[8, 16], help="N (tasks; 2N particles)")
    ap.add_argument("--outer-steps", type=int, default=20, help="outer steps per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compile_probe is not None:
        return compile_probe(args.compile_probe)
    jax.config.update("jax_enable_compilation_cache", False)
    peak = matmul_gflops()
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), {os.cpu_count()} cpus; "
          f"fp32 matmul 1024^3: {peak:.1f} GFLOP/s")
    print("| tasks | particles | compile s | ms / outer step | inner task-steps/s | MFLOP / step "
          "| GFLOP/s | % of matmul |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.tasks:
        r = measure(n, args.outer_steps, args.repeats)
        gflops = r["steps_per_s"] * r["flops_per_step"] / 1e9
        print(f"| {n} | {2 * n} | {r['compile_s']:.1f} | {r['ms_per_outer']:.1f} | "
              f"{r['steps_per_s']:.0f} | {r['flops_per_step'] / 1e6:.2f} | {gflops:.1f} | "
              f"{100 * gflops / peak:.0f}% |", flush=True)
    print(f"matmul peak re-measured after the runs: {matmul_gflops():.1f} GFLOP/s")
    print("\nfirst outer step (build + init + compile + run), fresh processes, new cache dir:")
    print("| tasks | cold s | warm s |\n|---|---|---|")
    for n in args.tasks:
        cold, warm = cold_and_warm_compile(n)
        print(f"| {n} | {cold:.1f} | {warm:.1f} |", flush=True)


if __name__ == "__main__":
    main()
