"""Does a learned optimizer under-step recurrent nets more as they get wider?

Trains one text-RNN task per width (``tasks`` family ``text_rnn``, the bench's defaults otherwise:
GRUs on docstrings, windows of 32, batch 32, 400 steps) with Adam at four rates and with the learned
optimizer at multiples of its step, and prints each final training loss over Adam's best. A rule
whose best multiple grows with width scales its steps down with width faster than the task wants
(``norm_mlp``'s muP factor is ``32 / fan_in`` on matrices).

    python benchmarks/recurrent_widths.py general --widths 32 64 128 --mults 1 2 4

Measured on the shipped ``general`` (2026-12-02, 2-core CPU, 3 min): Adam's best rate 3e-2 at widths
32 and 64, 1e-2 at 128; the rule at 1x / 2x / 4x its step: width 32 1.016 / 0.980 / 0.998, width 64
0.999 / 0.940 / 0.942, width 128 1.024 / 0.935 / 0.927 of Adam's best final loss.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="general", help="optimizer file or shipped name")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--mults", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--cell", default="gru", help="gru, lstm or rnn")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=100, help="the task's and run's key")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    import optax

    import learned_opt
    import tasks
    from learned_opt import compile_cache
    from tasks.training import train

    compile_cache.enable()
    loaded = learned_opt.load(args.checkpoint)
    rates = (3e-3, 1e-2, 3e-2, 1e-1)
    print(f"{args.checkpoint}: final training loss / Adam's best of {rates} on one {args.cell} text "
          f"RNN per width, {args.steps} steps; the rule at {args.mults} x its step")
    for width in args.widths:
        family = tasks.get_family("text_rnn", cell=args.cell, hidden_size=width)
        key = jax.random.PRNGKey(args.seed)
        task = family.task(family.sample(key))

        def final(tx):
            return float(jax.jit(lambda k: train(task, tx, k, args.steps).final_loss)(key))

        adam = [final(optax.adam(lr)) for lr in rates]
        best = min(adam)
        rule = [final(optax.chain(loaded.as_optax(args.steps), optax.scale(m))) / best
                for m in args.mults]
        print(f"  width {width}: Adam's best rate {rates[int(np.argmin(adam))]:g} (loss {best:.3f}); "
              "rule " + " / ".join(f"x{m:g} {r:.3f}" for m, r in zip(args.mults, rule)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
