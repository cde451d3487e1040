"""Cost of the data pipeline: inner steps/s with real batches vs one constant batch.

    python benchmarks/data_pipeline.py [--families mnist1d_mlp,digits_conv] [--pop 8] [--steps 500]

Every task keeps its dataset on the device and ``sample_batch(key)`` gathers a batch by
random indices inside the jitted, scanned training loop: no host work per inner step.
This measures what that gather costs: a population of ``--pop`` tasks of each family is
trained for ``--steps`` steps with the learned optimizer (the default architecture at its
initial meta-parameters) in one vmapped ``lax.scan``, (a) drawing a fresh batch every
step and (b) reusing one batch drawn before the loop. Ratio (a)/(b) near 1 means the
pipeline costs nothing next to the model and optimizer arithmetic.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import optax  # noqa: E402

import learned_opt  # noqa: E402
import tasks  # noqa: E402
from benchmarks.throughput import best_time  # noqa: E402


def make_run(family, tx, steps, fresh_batches):
    def one(cfg, key):
        task = family.task(cfg)
        k_init, k_fixed, k_run = jax.random.split(key, 3)
        params = task.init(k_init)
        fixed = task.sample_batch(k_fixed)

        def step(carry, k):
            p, s = carry
            batch = task.sample_batch(k) if fresh_batches else fixed
            loss, g = jax.value_and_grad(task.loss)(p, k, batch)
            u, s = tx.update(g, s, p, value=loss)
            return (optax.apply_updates(p, u), s), loss

        _, losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(k_run, steps))
        return losses

    return jax.jit(jax.vmap(one))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=None,
                    help="comma-separated task families (default: every registered family that "
                         "needs no prepared TFDS dataset)")
    ap.add_argument("--pop", type=int, default=8, help="tasks trained at once (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=500, help="inner steps per timing (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    names = args.families.split(",") if args.families else [n for n in tasks.list_families() if n != "mlp"]

    lopt = learned_opt.make("mlp")
    tx = lopt.as_optax(lopt.init(jax.random.PRNGKey(0)))
    dev = jax.devices()[0]
    print(f"device {dev.platform}:{dev.device_kind}; {args.pop} tasks x {args.steps} steps, learned "
          f"optimizer 'mlp'; inner steps/s")
    print(f"{'family':22s} {'real batches':>13s} {'constant batch':>15s} {'ratio':>7s}")
    for name in names:
        family = tasks.get_family(name)
        keys = jax.random.split(jax.random.PRNGKey(1), args.pop)
        cfgs = jax.vmap(family.sample)(keys)
        rates = []
        for fresh in (True, False):
            run = make_run(family, tx, args.steps, fresh)
            t = best_time(lambda: jax.block_until_ready(run(cfgs, keys)), args.repeats)
            rates.append(args.pop * args.steps / t)
        print(f"{name:22s} {rates[0]:13.0f} {rates[1]:15.0f} {rates[0] / rates[1]:7.2f}")


if __name__ == "__main__":
    main()
