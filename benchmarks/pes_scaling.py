"""PES meta-training throughput against population size and device count.

    python benchmarks/pes_scaling.py [--config default] [--pops 8,16,32,64] [--devices 1,2,4]

Inner task-steps/s (particles x truncation steps per second of outer steps) of the
config's full outer step (estimate + meta-update), for each population size and device
count. Each device count runs in its own subprocess: on a CPU the devices are fake
(XLA_FLAGS=--xla_force_host_platform_device_count=N sharing this machine's cores); on a
GPU/TPU host the flag does nothing and every worker uses the real local devices (pass
--devices 1 there).
Figures are printed as ratios against the 1-device figure of the same population, and
against a reference measured in the same process: the same particles taking the same
learned-optimizer steps in one vmapped lax.scan with no estimator (so the ratio is the
estimator's overhead; 1.0 = the profile is the task's and optimizer's own arithmetic).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    """Runs in a subprocess whose XLA_FLAGS fix the device count; prints JSON lines."""
    sys.path.insert(0, ROOT)
    import jax

    from benchmarks.throughput import best_time
    from meta_train import sharding
    from meta_train.config import get_config
    from meta_train.trainer import MetaTrainer

    dev = jax.devices()[0]
    for pop in args.pops:
        cfg = get_config(args.config).replace(num_pairs=pop // 2, estimator=args.estimator)
        tr = MetaTrainer(cfg)
        state = tr.init()
        n_outer = args.outer_steps

        def outer():
            s = state
            for _ in range(n_outer):
                s, _ = tr.outer_step(s)
            jax.block_until_ready(s.theta)

        rate = n_outer * tr.estimator.inner_steps_per_estimate / best_time(outer, args.repeats)

        # Reference: the same population stepping the same Unroll, each particle with its own
        # copy of theta (as perturbed particles have), sharded over the same devices, in one
        # scan: no estimator at all.
        u, K = tr.unroll, cfg.truncation_length
        thetas = jax.tree.map(lambda x: jax.numpy.stack([x] * pop), state.theta)
        inner = jax.vmap(u.init)(thetas, jax.random.split(jax.random.PRNGKey(1), pop))
        thetas, inner = jax.device_put((thetas, inner),
                                       sharding.population_shardings(tr.mesh, (thetas, inner)))

        @jax.jit
        def plain(thetas, inner, key):
            keys = jax.random.split(key, (n_outer * K, pop))
            return jax.lax.scan(lambda s, k: jax.vmap(u.step)(thetas, s, k), inner, keys)

        ref = n_outer * K * pop / best_time(
            lambda: jax.block_until_ready(plain(thetas, inner, jax.random.PRNGKey(2))), args.repeats)
        print(json.dumps({"devices": jax.device_count(), "device": f"{dev.platform}:{dev.device_kind}",
                          "pop": pop, "rate": rate, "plain": ref}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default", help="named meta-training config (default: %(default)s)")
    ap.add_argument("--estimator", default="pes", help="pes | tes | full_es | tbptt (default: %(default)s)")
    ap.add_argument("--pops", default="8,16,32,64", help="particle counts (default: %(default)s)")
    ap.add_argument("--devices", default="1,2,4", help="device counts (default: %(default)s)")
    ap.add_argument("--outer-steps", type=int, default=10, help="outer steps per timing (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per figure; the best is kept")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.pops = [int(p) for p in args.pops.split(",")]
    if args.worker:
        return worker(args)

    results = {}
    for n in [int(d) for d in args.devices.split(",")]:
        env = dict(os.environ, PYTHONPATH=ROOT)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--estimator", args.estimator,
               "--pops", ",".join(map(str, args.pops)), "--outer-steps", str(args.outer_steps),
               "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"{n}-device worker failed:\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                results[(r["devices"], r["pop"])] = r
    device_counts = sorted({d for d, _ in results})
    kind = next(iter(results.values()))["device"]
    print(f"{args.estimator} on config {args.config!r}, device {kind}; inner task-steps/s "
          f"(x the 1-device figure) [x a plain vmapped scan of the same steps]")
    print("particles " + "".join(f"{f'{d} device(s)':>30s}" for d in device_counts))
    for pop in args.pops:
        row = f"{pop:9d} "
        base = results.get((device_counts[0], pop))
        for d in device_counts:
            r = results.get((d, pop))
            cell = "-" if r is None else (f"{r['rate']:8.0f} (x{r['rate'] / base['rate']:.2f}) "
                                          f"[x{r['rate'] / r['plain']:.2f}]")
            row += f"{cell:>30s}"
        print(row)


if __name__ == "__main__":
    main()
