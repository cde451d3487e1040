"""Per-step cost of every learned-optimizer architecture, with and without DMD features and
unguarded, behind the per-step loss guard and behind the trajectory guard, relative to Adam on the same model, in one process.

    python benchmarks/step_cost.py [--task mnist1d_mlp_relu] [--steps 300] [--repeats 5]
    python benchmarks/step_cost.py --plain --archs mlp 'mlp:{"hidden_sizes": [16]}' adafactor_mlp
    python benchmarks/step_cost.py --plain --archs general 'general:{"orthogonalize": false}' \
        --task 'mnist1d_mlp:{"hidden_sizes": [512, 512]}'

``--archs`` also takes a shipped optimizer's name or a checkpoint file (its trained
meta-parameters, told the run's length), optionally with config overrides after the colon.
``--task`` also takes ``FAMILY:JSON``, a family's default task with constructor arguments
(e.g. a wider MLP), to see how the cost ratio falls as the model grows.

``--archs`` takes architecture names, or ``NAME:JSON`` with a config (e.g. a smaller hidden
layer); ``--plain`` times only the unguarded optimizers without DMD.

Each figure is one jitted ``lax.scan`` of ``--steps`` training steps (forward, backward and
the optimizer, through the optax adapter), best of ``--repeats`` rounds, divided by the step count;
every round times every optimizer once in turn (Adam included), so the ratios hold on a busy machine.
SGD is shown as the floor (forward + backward + a trivial update). The learned optimizers
use freshly initialised meta-parameters: cost does not depend on their values.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import optax  # noqa: E402

import learned_opt  # noqa: E402
import tasks  # noqa: E402
from learned_opt.loss_guard import guarded  # noqa: E402
from learned_opt.trajectory_guard import trajectory_guarded  # noqa: E402
from benchmarks.throughput import interleaved_best  # noqa: E402
from meta_train.evaluation import curves as ev  # noqa: E402

DMD = {"dmd_window": 8, "dmd_rank": 3}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mnist1d_mlp_relu",
                    help="named task (see `lopt tasks`), or FAMILY:JSON (a family's default task with "
                         "these constructor arguments)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--archs", nargs="*", default=None,
                    help="architectures, NAME or NAME:JSON-config (default: all registered)")
    ap.add_argument("--plain", action="store_true", help="unguarded, no DMD variants only")
    args = ap.parse_args()

    name, _, fam_conf = args.task.partition(":")
    if fam_conf:
        family = tasks.get_family(name, **json.loads(fam_conf))
        task = family.task(family.default_cfg())
    else:
        task = tasks.get_task(args.task)
    key = jax.random.PRNGKey(0)
    n_params = sum(x.size for x in jax.tree.leaves(task.init(key)))
    n = args.steps

    def time_tx(tx, guard=False):
        """A compiled, warmed-up run of n steps; timed later, interleaved with the others."""
        run = jax.jit(lambda k: ev.run_task(task, tx, k, n, guard=guard)[0])
        jax.block_until_ready(run(key))
        return lambda: jax.block_until_ready(run(key))

    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); task {args.task} "
          f"({n_params} parameters, {len(jax.tree.leaves(task.init(key)))} tensors); {n} steps per timing")
    rows = [("Adam", time_tx(optax.adam(1e-3))), ("SGD (forward+backward floor)", time_tx(optax.sgd(1e-2)))]
    for spec in args.archs or sorted(learned_opt.architectures()):
        arch, _, conf = spec.partition(":")
        conf = json.loads(conf) if conf else {}
        trained = arch not in learned_opt.architectures()   # a shipped name or a file
        loaded = learned_opt.load(arch) if trained else None
        for dmd_on in (False,) if args.plain else (False, True):
            if trained:
                lopt = learned_opt.make(loaded.lopt.architecture, {
                    **dataclasses.asdict(loaded.lopt.config), **conf, **(DMD if dmd_on else {})})
                theta = loaded.theta if not dmd_on else lopt.init(jax.random.PRNGKey(1))
            else:
                lopt = learned_opt.make(arch, {**conf, **(DMD if dmd_on else {})})
                theta = lopt.init(jax.random.PRNGKey(1))
            name = spec + (" +DMD" if dmd_on else "")
            rows.append((name, time_tx(lopt.as_optax(theta, n if trained else None))))
            if not args.plain:
                rows.append((name + " +guard", time_tx(guarded(lopt, theta), guard=True)))
                rows.append((name + " +traj-guard",
                             time_tx(trajectory_guarded(lopt, theta, num_steps=n), guard=True)))
            print(f"  measured {name}", file=sys.stderr, flush=True)
    times = interleaved_best([fn for _, fn in rows], args.repeats)
    t_adam = times[0] / n
    print("\n| optimizer | us / step | x Adam |\n|---|---|---|")
    for (name, _), t in zip(rows, times):
        t /= n
        print(f"| {name} | {1e6 * t:.1f} | {t / t_adam:.2f} |")


if __name__ == "__main__":
    main()
