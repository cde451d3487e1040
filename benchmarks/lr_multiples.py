"""Is a learned optimizer limited by its step size? Final loss at multiples of its learning rate.

For each suite's first tasks, trains the optimizer with every step multiplied by ``k``
(``optax.chain(tx, optax.scale(k))``, the explicit learning rate of ``norm_mlp``) and prints its
final training loss divided by the best of Adam's over its evaluation grid
(``learned_opt.baselines.LR_GRIDS["adam"]``; the same task, initialisation and batches). A row whose best ratio sits at the largest or smallest ``k`` says the rule wants
steps it cannot take; a row that is above 1 at every ``k`` says step size is not what limits it
(e.g. a noise floor that needs annealing). ``--cosine`` adds each multiple with a cosine decay
to 0 over the run composed outside (``optax.scale_by_schedule``): does annealing, rather than
the step size, limit it (e.g. 20x past its meta-training horizon)?

    python benchmarks/lr_multiples.py general --suite nqm --suite text_rnn --tasks 2
    python benchmarks/lr_multiples.py general --suite mnist1d_mlp_horizon --tasks 1 --mults 0.1 0.3 1 --cosine
    python benchmarks/lr_multiples.py general --suite mnist1d_conv --steps 20000 --mults 0.1 0.316 1
    python benchmarks/lr_multiples.py general --suite text_rnn --tasks 1 --mults 3 --per-tensor
    python benchmarks/lr_multiples.py general --held-out --suite text_rnn --mults 1 --lopt-config '{"hypergrad": 0}' --lopt-config '{}'

``--steps`` trains a suite's tasks for another number of steps (the optimizer is told it), e.g.
to find the step multiple a horizon past meta-training wants on tasks no report suite trains
that long (the check behind ``norm_mlp``'s ``trained_horizon``). ``--per-tensor`` adds each
multiple applied to one tensor at a time: a gain on one tensor only points at its scale (e.g. a
muP role), a gain on every tensor at the rule's overall step size.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_SUITES = ("nqm", "quadratic_30d", "text_rnn", "mnist1d_conv", "digits_mlp", "mnist1d_mlp")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="general", help="optimizer file or shipped name")
    p.add_argument("--suite", action="append", help="suites (default: %s)" % ", ".join(DEFAULT_SUITES))
    p.add_argument("--tasks", type=int, default=2, help="first tasks of each suite")
    p.add_argument("--mults", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    p.add_argument("--steps", type=int, default=None,
                   help="train each suite's tasks for this many steps (default: the suite's own)")
    p.add_argument("--lopt-config", action="append", metavar="JSON",
                   help="override fields of the optimizer's config, e.g. '{\"trained_horizon\": 0}' "
                        "(the same meta-parameters without the horizon factor); repeated: each is "
                        "a variant, run against the same tuned Adam")
    p.add_argument("--held-out", action="store_true",
                   help="the suites' held-out tasks (`lopt bench --held-out`'s: another seed for "
                        "tasks, initialisations and batches)")
    p.add_argument("--cosine", action="store_true",
                   help="also each multiple with a cosine decay to 0 composed outside the rule")
    p.add_argument("--per-tensor", action="store_true",
                   help="also each multiple on one tensor at a time (the others at 1x): which tensor "
                        "wants the other step size?")
    args = p.parse_args(argv)

    import jax
    import optax

    import learned_opt
    from learned_opt import compile_cache
    from learned_opt.baselines import LR_GRIDS
    from tasks.suites import HELDOUT_SEED
    from tasks.suites import get_suite
    from tasks.training import train

    def scale_one(path: str, k: float) -> optax.GradientTransformation:
        """Every update of the tensor at ``path`` (``jax.tree_util.keystr``) times k."""
        def update(updates, state, params=None):
            return jax.tree_util.tree_map_with_path(
                lambda q, u: u * k if jax.tree_util.keystr(q) == path else u, updates), state
        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    compile_cache.enable()
    base = learned_opt.load(args.checkpoint)
    variants = [("", base)]
    if args.lopt_config:
        import json
        variants = []
        for text in args.lopt_config:
            try:
                cfg = {**dataclasses.asdict(base.lopt.config), **json.loads(text)}
                lopt = learned_opt.make(base.lopt.architecture, cfg)
            except (ValueError, TypeError, learned_opt.LearnedOptError) as e:
                p.error(f"--lopt-config: {str(e).splitlines()[0]}")
            variants.append((f"{text} " if len(args.lopt_config) > 1 else "", base._replace(lopt=lopt)))
    grid = LR_GRIDS["adam"]
    print(f"{args.checkpoint}: final training loss / best Adam's over lr {grid[0]:g}..{grid[-1]:g} "
          f"({len(grid)} rates), "
          f"at step multiples {args.mults}")
    for name in args.suite or DEFAULT_SUITES:
        suite = get_suite(name)
        if args.held_out:
            suite = dataclasses.replace(suite, seed=HELDOUT_SEED)
        if args.steps:
            suite = dataclasses.replace(suite, num_steps=args.steps)
        cfgs, keys = suite.tasks(min(args.tasks, suite.num_tasks))
        t0 = time.time()
        for i in range(len(keys)):
            task = suite.task_family.task(jax.tree.map(lambda x: x[i], cfgs))

            def final(tx):
                run = jax.jit(lambda k: train(task, tx, k, suite.num_steps).final_loss)
                return float(run(keys[i]))

            adam = min(final(optax.adam(lr)) for lr in grid)
            cos = optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, suite.num_steps))
            runs = [(f"x{k:g}", [optax.scale(k)]) for k in args.mults]
            runs += [(f"x{k:g}+cos", [optax.scale(k), cos]) for k in args.mults] if args.cosine else []
            if args.per_tensor:
                paths = [jax.tree_util.keystr(q) for q, _ in
                         jax.tree_util.tree_flatten_with_path(jax.eval_shape(task.init, keys[i]))[0]]
                runs += [(f"{path} x{k:g}", [scale_one(path, k)]) for path in paths for k in args.mults]
            finals = [final(optax.chain(loaded.as_optax(suite.num_steps), *extra))
                      for _, loaded in variants for _, extra in runs]
            runs = [(v + label, extra) for v, _ in variants for label, extra in runs]
            # a task Adam fits exactly (loss 0, e.g. a small dataset memorised) has no ratio
            ratios, what = ((finals, "loss") if adam <= 0 else
                            ([f / adam for f in finals], "ratio"))
            print(f"  {name} ({suite.num_steps} steps) task {i}: Adam best {adam:.3g}; {what} "
                  + "  ".join(f"{label}: {r:.3g}" for (label, _), r in zip(runs, ratios))
                  + f"  ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
