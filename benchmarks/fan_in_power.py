"""Would a gentler muP fan-in rule suit a trained ``norm_mlp`` rule better, at test time?

``norm_mlp`` scales each matrix's step by ``s = 32 / fan_in`` (``learned_opt.mup``). This trains the
first task of each suite with the loaded rule as it is and with the same meta-parameters under its
option ``mup_power`` alpha, ``s = (32 / fan_in)^alpha`` (input weights such as embedding tables keep
``s = 1``), and prints both final training losses over Adam's best of its 11 rates. ``alpha = 1`` is the rule as shipped;
``alpha < 1`` takes larger steps on wide layers and smaller ones on layers narrower than 32
(``--wide-only``: narrower layers keep ``32 / fan_in``). The
meta-parameters are unchanged, so this only says whether meta-training under another ``alpha`` is
worth trying.

    python benchmarks/fan_in_power.py general --alpha 0.5 --suite mnist1d_mlp_wide --suite text_rnn

Measured on the shipped ``general`` (2026-12-02, alpha 0.5, first task of each suite), final loss /
Adam's best, as shipped -> alpha 0.5: 512x512 MLPs 0.049 -> 0.0011, MNIST-1D MLPs 0.618 -> 0.626, text
RNN 1.101 -> 1.054, digits convs 0.034 -> 0.045, 1-D convs 1.034 -> 0.871.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_SUITES = ("mnist1d_mlp_wide", "mnist1d_mlp", "text_rnn", "digits_conv", "mnist1d_conv")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="general", help="a norm_mlp file or shipped name")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="s = (base / fan_in)^alpha, base the rule's mup_base_fan_in (32 for general; "
                        "1 = as trained)")
    p.add_argument("--wide-only", action="store_true",
                   help="alpha only on layers wider than the base; narrower ones keep base / fan_in")
    p.add_argument("--suite", action="append", help="suites (default: %s)" % ", ".join(DEFAULT_SUITES))
    args = p.parse_args(argv)

    import dataclasses

    import jax
    import optax

    import learned_opt
    from learned_opt import compile_cache
    from learned_opt.baselines import LR_GRIDS
    from tasks.suites import get_suite
    from tasks.training import train

    compile_cache.enable()
    loaded = learned_opt.load(args.checkpoint)
    if loaded.lopt.architecture != "norm_mlp":
        p.error(f"{args.checkpoint} is a {loaded.lopt.architecture!r} optimizer, not norm_mlp")
    base = loaded.lopt.config.mup_base_fan_in
    try:
        powered_lopt = learned_opt.make("norm_mlp", {**dataclasses.asdict(loaded.lopt.config),
                                                     "mup_power": args.alpha,
                                                     "mup_power_wide_only": args.wide_only})
    except learned_opt.LearnedOptError as e:
        p.error(f"--alpha: {str(e).splitlines()[0]}")

    rule = f"({base:g} / fan_in)^{args.alpha:g}" + (f" where fan_in > {base:g}" if args.wide_only else "")
    print(f"{args.checkpoint}: final training loss / Adam's best, as trained vs s = {rule}")
    for name in args.suite or DEFAULT_SUITES:
        suite = get_suite(name)
        cfgs, keys = suite.tasks(1)
        task = suite.task_family.task(jax.tree.map(lambda x: x[0], cfgs))

        def final(tx):
            return float(jax.jit(lambda k: train(task, tx, k, suite.num_steps).final_loss)(keys[0]))

        adam = min(final(optax.adam(lr)) for lr in LR_GRIDS["adam"])
        as_is = final(loaded.as_optax(suite.num_steps)) / adam
        powered = final(powered_lopt.as_optax(loaded.theta, num_steps=suite.num_steps)) / adam
        print(f"  {name}: Adam best {adam:.4g}; as trained {as_is:.4g}, alpha {args.alpha:g} {powered:.4g}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
