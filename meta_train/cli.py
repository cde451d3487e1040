"""`lopt`: meta-train, apply and evaluate learned optimizers.

    lopt train   [--config NAME] [--out DIR] [--set key=value ...] [--resume]
                 [--distributed --coordinator HOST:PORT --num-processes N --process-id I]
    lopt apply   CHECKPOINT --task NAME [--steps N] [--guard [step|trajectory] [--check-every N]]
    lopt report  CHECKPOINT [--out DIR] [--num-tasks N] [--steps N]
    lopt bench   [OPTIMIZER ...] [--full] [--suite NAME] [--out DIR]
    lopt soup    CHECKPOINT CHECKPOINT ... --out FILE [--weights W ...] [--set key=value ...]
    lopt tasks

User errors (unknown names, bad values, unreadable checkpoints, missing datasets)
print one line on stderr and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

EXAMPLES = """examples:
  lopt train                                  # default config (~5 min on 2 CPU cores)
  lopt train --config quadratic --out runs/q  # a one-minute run on random quadratics
  lopt train --set outer_steps=600 --set meta_lr=1e-3
  lopt train --out runs/default --resume      # continue a killed run
  lopt apply runs/default/optimizer.npz --task mnist1d_mlp_tanh --steps 1000
  lopt apply runs/default/optimizer.npz --task digits_mlp_relu --guard
  lopt apply rnn_mlp --task digits_mlp_relu --guard trajectory --check-every 50
  lopt report runs/default/optimizer.npz --num-tasks 8
  lopt report runs/cmp/*/optimizer.npz --out runs/cmp/report   # compare several
  lopt train --config lstm_dmd                # other architectures: lopt train --list-configs
  lopt bench                                  # every shipped optimizer, every suite (~20 min)
  lopt bench --full --out checkpoints/bench   # all tasks, 3 seeds (a few hours on 2 cores)
  lopt soup runs/s0/optimizer.npz runs/s1/optimizer.npz --out runs/soup.npz  # average seeds
  lopt tasks
  # two hosts (run on each, with its own --process-id):
  lopt train --distributed --coordinator host0:12355 --num-processes 2 --process-id 0
"""


def _configs_help() -> str:
    from meta_train.config import NAMED_CONFIGS
    return "\n".join(f"  {name:10s} {cfg.description}" for name, cfg in NAMED_CONFIGS.items())


def train_config(args):
    """The TrainConfig that ``lopt train`` ARGS run: the named config with --set and --estimator."""
    from meta_train.config import get_config
    overrides = args.set + ([f"estimator={args.estimator}"] if args.estimator else [])
    return get_config(args.config, overrides)


def cmd_train(args) -> int:
    from learned_opt.errors import LearnedOptError

    if args.list_configs:
        print(_configs_help())
        return 0
    cfg = train_config(args)
    out = args.out or os.path.join("runs", args.config)
    if not args.distributed and (args.coordinator or args.num_processes is not None
                                 or args.process_id is not None):
        from meta_train.distributed import DistributedError
        raise DistributedError("--coordinator, --num-processes and --process-id need --distributed")
    if args.distributed:
        # Before anything touches a jax backend.
        from meta_train import distributed
        distributed.initialize(distributed.resolve(args.coordinator, args.num_processes,
                                                   args.process_id, args.dist_timeout))
    import jax
    from meta_train.evaluation.plots import plot_meta_training
    from meta_train.evaluation.report import write_report
    from meta_train.run import OPTIMIZER_FILE, PLOT_FILE, final_eval, train

    try:
        state, records, summary = train(cfg, out, resume=args.resume, progress=not args.no_progress,
                                        tensorboard=not args.no_tensorboard)
    except Exception as e:
        if args.distributed:
            if isinstance(e, LearnedOptError):
                distributed.disarm()    # every process reports its own error, not a "lost peer"
            else:
                distributed.run_failed(e)   # a lost peer: one line and exit 3, not a traceback
        raise
    if jax.process_index() == 0:
        plot_meta_training(records, os.path.join(out, PLOT_FILE))
    if args.distributed:
        # Leave the process group now (a barrier), so the others need not wait for the report.
        main = jax.process_index() == 0
        distributed.shutdown()
        if not main:
            return 0    # process 0 prints and writes the report
    ckpt = os.path.join(out, OPTIMIZER_FILE)
    where = (f" on {summary['devices']} devices" if summary["processes"] == 1 else
             f" on {summary['devices']} devices in {summary['processes']} processes")
    print(f"meta-trained {int(state.step)} outer steps in {summary['wall_s']:.0f} s "
          f"({summary['inner_steps_per_s']:.0f} inner steps/s"
          f"{where if summary['devices'] > 1 else ''}) -> {ckpt}")
    ev = final_eval(records)
    if ev is not None:
        first = next(r for r in records if "eval_mean_loss" in r)
        print(f"held-out eval (mean normalised loss over {cfg.eval_steps} steps): "
              f"{first['eval_mean_loss']:.4f} -> {ev['eval_mean_loss']:.4f}")
    if not args.no_report:
        rep_dir = os.path.join(out, "report")
        rep = write_report(ckpt, rep_dir, num_tasks=args.report_tasks, progress=_progress(args),
                           command=f"lopt report {ckpt} --out {rep_dir} --num-tasks {args.report_tasks}")
        _print_summary(rep)
    return 0


def _progress(args):
    if getattr(args, "no_progress", False):
        return None
    return lambda msg: print(f"  evaluating {msg}", file=sys.stderr, flush=True)


def _print_summary(rep) -> None:
    from meta_train.evaluation.report import summary_lines
    print(f"report -> {rep['path']} ({rep['wall_s']:.0f} s)\n"
          "median speedup over tuned Adam / median final training loss relative to tuned Adam's:")
    print("\n".join(summary_lines(rep)))


def _baseline_list(text: str) -> tuple:
    """'a,b' -> ('a', 'b'); 'none' -> (). Names are checked by the report, before any work."""
    return () if text.strip() in ("", "none") else tuple(t.strip() for t in text.split(","))


def _guards(text: str) -> tuple:
    """'both' -> ('step', 'trajectory'); 'step' / 'trajectory' -> that one."""
    return ("step", "trajectory") if text == "both" else (text,)


def cmd_report(args) -> int:
    from meta_train.evaluation.report import write_report
    first = args.checkpoints[0]
    out = args.out or (os.path.join(os.path.dirname(os.path.abspath(first)), "report") if os.path.exists(first)
                       else os.path.join("runs", f"report-{first}"))    # a shipped name
    command = "lopt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rep = write_report(args.checkpoints, out, num_tasks=args.num_tasks, num_steps=args.steps,
                       long_factor=args.long_factor, ood_tasks=args.ood_tasks,
                       guard=() if args.no_guard else _guards(args.guards),
                       command=command, progress=_progress(args), suite_names=args.suite,
                       seeds=args.seeds, baselines=args.baselines, adam_factor=args.adam_factor)
    _print_summary(rep)
    return 0


def cmd_apply(args) -> int:
    from learned_opt.errors import LearnedOptError
    from learned_opt.trajectory_guard import DEFAULT_CHECK_EVERY
    from meta_train.evaluation.apply import apply_to_task

    if args.check_every is not None and args.guard != "trajectory":
        raise LearnedOptError("--check-every is the trajectory guard's: add --guard trajectory")
    out = args.out or os.path.join("runs", f"apply-{args.task}")
    r = apply_to_task(args.checkpoint, args.task, steps=args.steps, seed=args.seed,
                      adam_lr=args.adam_lr, guard=args.guard or False, out=out,
                      check_every=args.check_every or DEFAULT_CHECK_EVERY)
    if args.guard == "step":
        print(f"loss guard: fell back to Adam on {100 * r['fallback_rate']:.1f}% of steps")
    elif args.guard == "trajectory":
        last = (f", last after step {r['last_switch_step'] + 1}" if r["switches"] else "")
        print(f"trajectory guard: switched to Adam's run at {r['switches']} of {r['checks']} checks "
              f"({100 * r['switch_rate']:.1f}%: every {r['check_every']} steps before the last, and the final "
              f"choice on the whole training set){last}")
    lo, ad = r["learned"], r["adam"]
    print(f"{args.task}, {args.steps} steps: final training loss learned {lo['final_train_loss']:.4f} "
          f"vs Adam(lr={args.adam_lr:g}) {ad['final_train_loss']:.4f}; test loss "
          f"{lo['test_loss']:.4f} vs {ad['test_loss']:.4f}\ncurves -> {out}/curves.png, {out}/curves.json")
    return 0


def cmd_bench(args) -> int:
    from meta_train.evaluation.bench import run_bench, summary_lines
    command = "lopt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    progress = None if args.no_progress else (lambda msg: print(f"  bench {msg}", file=sys.stderr,
                                                                flush=True))
    r = run_bench(args.optimizers or None, args.suite, out_dir=args.out, full=args.full,
                  seeds=args.seeds, max_tasks=args.max_tasks, reps=args.reps, progress=progress,
                  command=command, baselines=args.baselines,
                  guard=False if args.no_guard else _guards(args.guards), held_out=args.held_out,
                  reference_cache=args.reference_cache)
    print(f"leaderboard -> {r['path']} ({r['wall_s']:.0f} s); IQM speedup over tuned Adam [95% CI]:")
    print("\n".join(summary_lines(r)))
    return 0


def cmd_tasks(args) -> int:
    import tasks
    from meta_train.config import NAMED_CONFIGS
    print("task families (meta-training distributions):")
    for name, desc in tasks.list_families().items():
        print(f"  {name:22s} {desc}")
    print("named tasks (for `lopt apply --task`):")
    for name, desc in tasks.list_tasks().items():
        print(f"  {name:22s} {desc}")
    from tasks.suites import list_suites
    print("held-out evaluation suites (for `lopt report --suite`):")
    for name, desc in list_suites().items():
        print(f"  {name:22s} {desc}")
    print("meta-training configs (for `lopt train --config`):")
    for name, cfg in NAMED_CONFIGS.items():
        print(f"  {name:22s} {cfg.description}")
    return 0


def cmd_soup(args) -> int:
    from learned_opt import soup
    if os.path.abspath(args.out) in {os.path.abspath(c) for c in args.checkpoints}:
        from learned_opt.base import CheckpointError
        raise CheckpointError(f"soup: --out {args.out} is one of the files to average; write the soup elsewhere")
    from meta_train.config import parse_override
    meta = {"note": args.note} if args.note else None
    overrides = dict(parse_override(t) for t in args.set)
    s = soup.save(args.out, args.checkpoints, args.weights, meta, overrides)
    sets = f"; config {json.dumps(overrides)}" if overrides else ""
    if "soup" not in s.metadata:
        print(f"wrote {args.out}: {args.checkpoints[0]}{sets}")
        return 0
    weights = ", ".join(f"{m['weight']:.3g}" for m in s.metadata["soup"])
    print(f"wrote {args.out}: {s.metadata['label']} (weights {weights}; members' spread around the mean "
          f"{100 * s.metadata['soup_spread']:.1f}% of its norm{sets})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from meta_train.estimators import ESTIMATORS
    p = argparse.ArgumentParser(
        prog="lopt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-train learned optimizers with PES, apply them to new tasks, and report "
                    "how they compare with Adam.", epilog=EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="meta-train a learned optimizer, save it and write a report",
                       description="Meta-train a learned optimizer on a task family (PES by default, "
                                   "or truncated ES, full-episode ES, truncated BPTT). Writes "
                                   "config.json, metrics.jsonl, meta_training.png, train_state.npz "
                                   "(atomic, every checkpoint_every steps; the one before is kept as "
                                   "train_state.prev.npz and --resume falls back to it if the newest is "
                                   "damaged) and optimizer.npz into --out, "
                                   "then a report in --out/report.",
                       epilog="named configs:\n" + _configs_help() +
                              "\n\nconfig keys for --set: see meta_train/config.py (TrainConfig); e.g. "
                              "--set outer_steps=600 --set 'family_kwargs={\"hidden_sizes\": [64]}'")
    t.add_argument("--config", default="default", help="named config (default: %(default)s)")
    t.add_argument("--out", help="run directory (default: runs/CONFIG)")
    t.add_argument("--estimator", choices=list(ESTIMATORS),
                   help="outer gradient estimator: " + "; ".join(
                       f"{name}: {spec.description}" for name, spec in ESTIMATORS.items()) +
                        ". Options via --set: sigma, num_pairs, truncation_length, antithetic, "
                        "loss_clip, sign_delta, full_es_loss")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field; VALUE is parsed as JSON when it can be")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard event files (written by default beside metrics.jsonl, "
                        "with the same scalars; watch with: tensorboard --logdir OUT)")
    t.add_argument("--no-report", action="store_true", help="skip the held-out report at the end")
    t.add_argument("--report-tasks", type=int, default=8, help="held-out tasks in the report (default: 8)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--list-configs", action="store_true", help="list named configs and exit")
    d = t.add_argument_group(
        "multi-host (jax.distributed)",
        "run the same command on every host with its own --process-id; the population is sharded "
        "over all hosts' devices, process 0 writes the files; --out must be on a filesystem all "
        "hosts see for --resume. Each flag can also come from LOPT_COORDINATOR, "
        "LOPT_NUM_PROCESSES, LOPT_PROCESS_ID (flags win).")
    d.add_argument("--distributed", action="store_true", help="join a multi-process run")
    d.add_argument("--coordinator", metavar="HOST:PORT",
                   help="process 0's host and a free port (PORT+1 is used too)")
    d.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    d.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0..N-1")
    d.add_argument("--dist-timeout", type=float, metavar="SECONDS", default=120.0,
                   help="how long to wait for all processes to start, and for a silent peer "
                        "before giving up (default: %(default)g)")
    t.set_defaults(fn=cmd_train)

    a = sub.add_parser("apply", help="train a named task with a learned optimizer, beside Adam",
                       description="Train a named task (see `lopt tasks`) with a learned optimizer "
                                   "loaded from CHECKPOINT and with Adam, from the same initialisation "
                                   "and batches; writes curves.png and curves.json.")
    a.add_argument("checkpoint", help="learned-optimizer file (e.g. runs/default/optimizer.npz) "
                                      "or a shipped name (e.g. rnn_mlp)")
    a.add_argument("--task", required=True, help="named task, see `lopt tasks`")
    a.add_argument("--steps", type=int, default=1000, help="training steps (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="initialisation and batch seed")
    a.add_argument("--adam-lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    a.add_argument("--guard", nargs="?", const="step", choices=("step", "trajectory"),
                   help="run the learned optimizer behind a guard with Adam(--adam-lr) as fallback: "
                        "'step' (the default when bare) the per-step loss guard (LGL2O: each step "
                        "keeps the lower of the two proposals), 'trajectory' the trajectory guard "
                        "(Adam runs alongside; at every check the run moves onto Adam's if it "
                        "trails by more than 5%%; about 2x the cost per step)")
    a.add_argument("--check-every", type=int, metavar="N",
                   help="with --guard trajectory: steps between its checks; the last step is "
                        "always one (default: 50, learned_opt.trajectory_guard.DEFAULT_CHECK_EVERY)")
    a.add_argument("--out", help="output directory (default: runs/apply-TASK)")
    a.set_defaults(fn=cmd_apply)

    r = sub.add_parser("report", help="compare learned optimizers with Adam on held-out suites",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Evaluate one or more learned optimizers (checkpoints meta-trained on the "
                                   "same family), their loss-guarded versions and Adam (lr=1e-3 and tuned per "
                                   "task on a log grid) on held-out suites: unseen tasks of the family at the "
                                   "meta-training horizon, the same tasks for --long-factor times longer, and "
                                   "tasks outside the family (another dataset, another architecture). Writes "
                                   "report.md, report.json and one PNG per suite.",
                       epilog="example:\n  lopt report runs/cmp/*/optimizer.npz --out runs/cmp/report")
    r.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="learned-optimizer file(s), or shipped names (mlp, rnn_mlp, adafactor_mlp, lstm)")
    r.add_argument("--out", help="output directory (default: beside the first checkpoint, report/)")
    r.add_argument("--num-tasks", type=int, default=8, help="held-out in-family tasks (default: %(default)s)")
    r.add_argument("--steps", type=int, help="steps per task (default: the meta-training horizon)")
    r.add_argument("--long-factor", type=int, default=5,
                   help="long-horizon suite = this many times the horizon; 1 skips it (default: %(default)s)")
    r.add_argument("--ood-tasks", type=int, default=4,
                   help="tasks per out-of-distribution suite; 0 skips them (default: %(default)s)")
    r.add_argument("--suite", action="append", metavar="NAME",
                   help="evaluate on this named held-out suite instead (repeatable; see `lopt tasks`)")
    r.add_argument("--seeds", type=int, default=3, help="seeds per task (default: %(default)s)")
    r.add_argument("--baselines", type=_baseline_list, default="adamw,momentum,rmsprop,lion,radam",
                   help="comma-separated baselines tuned per task besides Adam, or 'none'; also "
                        "adam_cosine (Adam under a cosine decay to 0 over the run) and sgd "
                        "(default: %(default)s)")
    r.add_argument("--adam-factor", type=int, default=4,
                   help="Adam's reference runs this many times the horizon, which bounds the "
                        "speedups it can resolve (default: %(default)s)")
    r.add_argument("--guards", choices=("both", "step", "trajectory"), default="both",
                   help="guarded versions to add, each with Adam at the task's tuned learning rate as "
                        "fallback: 'step' the per-step loss guard (LGL2O), 'trajectory' the trajectory "
                        "guard, 'both' (default: %(default)s)")
    r.add_argument("--no-guard", action="store_true", help="skip the guarded versions")
    r.add_argument("--no-progress", action="store_true", help="no progress messages")
    r.set_defaults(fn=cmd_report)

    b = sub.add_parser("bench", help="rank every optimizer on every named suite (leaderboard)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Every learned optimizer (default: every shipped one) unguarded, behind "
                                   "the per-step loss guard and behind the trajectory guard, plus Adam and "
                                   "the baselines tuned per task, on every named suite (`lopt tasks`). "
                                   "Writes leaderboard.md (a ranked table: interquartile-mean speedup over "
                                   "tuned Adam with 95% stratified-bootstrap intervals per suite and "
                                   "overall, fraction of tasks faster, worst final loss; the guards side "
                                   "by side; cost per step; per-suite detail), bench.json and plots. "
                                   "Each finished suite is saved, so rerunning the same command resumes.",
                       epilog="examples:\n  lopt bench\n  lopt bench mlp rnn_mlp --suite nqm --suite digits_conv\n"
                              "  lopt bench --full --out checkpoints/bench")
    b.add_argument("optimizers", nargs="*", metavar="OPTIMIZER",
                   help="checkpoint files or shipped names (default: every shipped optimizer)")
    b.add_argument("--suite", action="append", metavar="NAME",
                   help="only this named suite (repeatable; default: all)")
    b.add_argument("--full", action="store_true",
                   help="every task of each suite and 3 seeds (default: the first 2 tasks of each, 2 seeds)")
    b.add_argument("--seeds", type=int, help="seeds per task (>= 2; overrides the default / --full)")
    b.add_argument("--max-tasks", type=int, help="at most this many tasks per suite")
    b.add_argument("--baselines", type=_baseline_list, default=None,
                   help="comma-separated baselines tuned per task besides Adam, or 'none'; also "
                        "adam_cosine (Adam under a cosine decay to 0 over the run) and sgd "
                        "(default: adamw,momentum,rmsprop,lion,radam)")
    b.add_argument("--guards", choices=("both", "step", "trajectory"), default="both",
                   help="guarded versions beside the unguarded one: 'step' the per-step loss guard, "
                        "'trajectory' the trajectory guard, 'both' (default: %(default)s)")
    b.add_argument("--no-guard", action="store_true",
                   help="only the learned optimizers as they are (skip both guarded versions)")
    b.add_argument("--held-out", action="store_true",
                   help="other tasks of the same suites (drawn from another seed): an out-of-sample "
                        "check of settings chosen by looking at the bench")
    b.add_argument("--reference-cache", metavar="DIR",
                   help="keep tuned Adam's runs on each suite in DIR and reuse them when the same "
                        "suite is benched again (same tasks, seeds, code, jax and device): most of "
                        "a bench's time, and independent of the optimizers benched")
    b.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default: %(default)s)")
    b.add_argument("--out", default="runs/bench", help="output directory (default: %(default)s)")
    b.add_argument("--no-progress", action="store_true", help="no progress messages")
    b.set_defaults(fn=cmd_bench)

    so = sub.add_parser(
        "soup", help="average the meta-parameters of optimizers fine-tuned from one start (seeds)",
        description="Write the weighted average (a 'model soup') of the meta-parameters of several optimizer "
                    "files of one architecture and config, e.g. the same recipe meta-trained with different "
                    "seeds from one starting optimizer: the seeds' noise averages out (learned_opt/soup.py). "
                    "Prints how far the members are from their mean; averaging unrelated optimizers rarely works.")
    so.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                    help="optimizer files (or shipped names) to average, at least two (one with --set)")
    so.add_argument("--out", required=True, help="the soup's optimizer file")
    so.add_argument("--weights", type=float, nargs="+", metavar="W",
                    help="one non-negative weight per file (normalised to sum 1; default: equal)")
    so.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a config field of the written optimizer, one that adds no meta-parameter "
                         "(test-time settings, e.g. --set hypergrad=0.1); with one CHECKPOINT, re-save it so")
    so.add_argument("--note", default=None, help="a note stored in the file's metadata")
    so.set_defaults(fn=cmd_soup)

    k = sub.add_parser("tasks", help="list task families, named tasks and configs")
    k.set_defaults(fn=cmd_tasks)
    return p


def main(argv=None) -> int:
    from learned_opt.errors import LearnedOptError
    args = build_parser().parse_args(argv)
    from learned_opt import compile_cache
    compile_cache.enable()   # $LOPT_COMPILE_CACHE or ~/.cache/learned_opt/jax; LOPT_COMPILE_CACHE=0: off
    for name in ("steps", "num_tasks", "report_tasks", "long_factor", "seeds", "adam_factor",
                 "check_every", "max_tasks", "reps"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            print(f"lopt: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("lopt: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    except LearnedOptError as e:
        msg = str(e).strip().replace("\n", " ")
        print(f"lopt: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
