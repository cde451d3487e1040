"""Which trajectory-guard rule costs a learned optimizer the least speed? Guard settings side by side.

For each suite's first tasks and seeds (the bench's: ``meta_train.evaluation.compare``'s Adam
grid, tuned rate, reference envelope and speedup), runs the optimizer unguarded and behind the
trajectory guard (``learned_opt.trajectory_guard``, tuned Adam as the fallback) under each named
rule, and prints per suite and rule the median speedup over tuned Adam (over tasks, each the
seed-mean curve's), the worst task's final training loss / tuned Adam's, the switch rate and the
runs that ended on Adam's final parameters (scored on Adam's last steps,
``compare.score_on_fallback``). The guarantee (final loss within 5% of the fallback's) holds under
every rule; what differs is how much speed the guard takes away on the way.

Rules: ``reset`` re-initialises the learned state at every switch and checks every 50 steps at 5%
(the guard before 2026-12-01); ``keep`` keeps the learned state (its schedule position) across a
switch; ``keep+mid0.2`` / ``keep+mid0.5`` also allow 20% / 50% at the checks before the last
(``trajectory_guard``'s defaults); ``final`` checks only the last step (and non-finite steps);
``+defer`` leaves the last step's check to ``final_choice`` on the final training loss
(``defer_last_check``) instead of the last guard batch: ``keep+mid0.5+defer`` is what reports and
``lopt bench`` run (``meta_train.evaluation.curves.DEFER_LAST_CHECK``).

    python benchmarks/guard_settings.py general --suite mnist1d_conv --suite digits_mlp
    python benchmarks/guard_settings.py general --suite text_rnn --rules reset keep+mid0.5
    python benchmarks/guard_settings.py general --held-out --rules keep keep+mid0.2 keep+mid0.5 final

``--held-out`` draws each suite's tasks, initialisations and batches from another seed
(``tasks.suites.HELDOUT_SEED``): the same kinds of problem, none of the bench's tasks, to check a
rule chosen on the bench's tasks. ``--reference-cache DIR`` reads Adam's runs from (or keeps them
in) the cache ``lopt bench --reference-cache DIR`` writes (``meta_train.evaluation.references``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RULES = {
    "reset": dict(interim_tolerance=None, keep_state=False),
    "keep": dict(interim_tolerance=None, keep_state=True),
    "keep+mid0.2": dict(interim_tolerance=0.2, keep_state=True),
    "keep+mid0.5": dict(interim_tolerance=0.5, keep_state=True),
    "final": dict(interim_tolerance=float("inf"), keep_state=True),
    "keep+mid0.5+defer": dict(interim_tolerance=0.5, keep_state=True, defer_last_check=True),
    "final+defer": dict(interim_tolerance=float("inf"), keep_state=True, defer_last_check=True),
}
DEFAULT_SUITES = ("mnist1d_conv", "digits_mlp", "quadratic_30d", "nqm")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="general", help="optimizer file or shipped name")
    p.add_argument("--suite", action="append", help="suites (default: %s)" % ", ".join(DEFAULT_SUITES))
    p.add_argument("--tasks", type=int, default=4, help="first tasks of each suite (the bench's: 4)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per task (the bench's: 2)")
    p.add_argument("--held-out", action="store_true",
                   help="tasks of the same suites from another seed (none of the bench's tasks)")
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES),
                   help="guard rules to run (default: all)")
    p.add_argument("--reference-cache", metavar="DIR",
                   help="reuse tuned Adam's runs kept in DIR by `lopt bench --reference-cache DIR` "
                        "(or keep them there)")
    args = p.parse_args(argv)

    import jax.numpy as jnp
    import numpy as np
    import optax

    import learned_opt
    from learned_opt import compile_cache
    from learned_opt.baselines import LR_GRIDS
    from learned_opt.trajectory_guard import trajectory_guarded
    from meta_train.evaluation import compare as C
    from meta_train.evaluation import speedup as sp
    from meta_train.evaluation.bench import bench_suites

    compile_cache.enable()
    lopt, theta, _ = learned_opt.load(args.checkpoint)
    names = args.suite or list(DEFAULT_SUITES)
    suites = bench_suites(names, args.held_out)     # unknown names fail here, before any work
    which = " (held-out tasks)" if args.held_out else ""
    print(f"{args.checkpoint}: {args.tasks} tasks{which} x {args.seeds} seeds per suite; median speedup over "
          "tuned Adam / worst task's final loss over tuned Adam's / switch rate / runs ended on Adam",
          flush=True)
    rows = []
    for suite in suites:
        t0 = time.time()
        fam, T = suite.task_family, suite.num_steps
        cfgs, task_keys = suite.tasks(args.tasks)
        n = len(task_keys)
        keys = C.seed_keys(task_keys, args.seeds)
        window = C.speedup_window(T)
        grid = np.asarray(LR_GRIDS["adam"], np.float32)
        ref = C.suite_adam_reference(suite, cfgs, keys, grid, 4, args.reference_cache)
        env, lr = ref.envelopes, grid[ref.best]
        adam_losses, adam_final = ref.tuned[0], ref.tuned[2]

        def summary(losses, final, rate=float("nan"), ended=0):
            s = [sp.speedup_curve(losses[i], env[i], window)[0].value for i in range(n)]
            worst = float(np.max(np.mean(final, axis=1) / np.mean(adam_final, axis=1)))
            return float(np.median(s)), worst, rate, ended

        un = C._curves(fam, cfgs, keys, lambda _, th: lopt.as_optax(th, T), jnp.zeros(n), theta, T)
        out = {"unguarded": summary(un.losses, un.final_loss)}
        for rule in args.rules:
            make = lambda r, th, kw=RULES[rule]: trajectory_guarded(  # noqa: E731
                lopt, th, optax.adam(r), num_steps=T, **kw)
            run = C._curves(fam, cfgs, keys, make, jnp.asarray(lr), theta, T, guard=True)
            scored = C.score_on_fallback(run.losses, run.on_fallback, adam_losses, window)
            out[rule] = summary(scored, run.final_loss, float(np.mean(run.rate)),
                                int(np.sum(run.on_fallback)))
        for label, (med, worst, rate, ended) in out.items():
            extra = "" if label == "unguarded" else f"  rate {100 * rate:5.1f}%  ended on Adam {ended}"
            print(f"{suite.name:>20} {label:>17}: {med:5.2f}  worst {worst:6.3f}{extra}", flush=True)
        print(f"{suite.name:>20} ({time.time() - t0:.0f} s)", flush=True)
        rows.append((suite.name, out))
    labels = ["unguarded", *args.rules]
    print("\n| suite | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, out in rows:
        print(f"| `{name}` | " + " | ".join(f"{out[k][0]:.2f} / {out[k][1]:.3f}" for k in labels) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
