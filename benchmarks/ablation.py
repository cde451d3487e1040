"""Ablation of the general optimizer's ingredients at equal meta-training compute.

Every variant is the `general` config (meta_train/config.py) with ONE ingredient switched, the
same number of outer steps and the same population (the single-family variant puts all of the
mixture's particles on its main family), meta-trained from the same seed into
``<out>/<variant>/``; then all variants go through one ``lopt bench`` on the same held-out
suites (unguarded, tuned Adam as the reference, the same tasks and seeds for every variant), so
the table compares like with like. Both steps resume: a variant whose optimizer file exists is
not retrained, a finished suite is not rerun.

    python benchmarks/ablation.py --outer-steps 600 --out runs/ablation
    python benchmarks/ablation.py --only full no_mup --outer-steps 600    # a subset

Writes ``<out>/ablation.md``: per variant, the IQM speedup over tuned Adam [95% CI] per suite and
over all, the fraction of tasks faster, and the worst final-loss ratio; the meta-training wall
time of each variant is listed beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from learned_opt import compile_cache  # noqa: E402
from meta_train.config import GENERAL_FAMILIES, get_config  # noqa: E402

SUITES = ("mnist1d_mlp", "digits_mlp", "mnist1d_mlp_deep", "digits_autoencoder", "nqm",
          "mnist1d_mlp_long")


def _lopt(**kw):
    return {"lopt_config": kw}


NO_AUGMENT = tuple({k: v for k, v in f.items() if k != "augment"} for f in GENERAL_FAMILIES)
# the mixture's main family with every particle of the mixture (4 pairs where a family sets none)
ONE_FAMILY = (dict(GENERAL_FAMILIES[0], num_pairs=sum(f.get("num_pairs", 4) for f in GENERAL_FAMILIES)),)


# variant -> (what is switched, config overrides)
VARIANTS = {
    "full": ("the shipped meta-training recipe (config `general`)", {}),
    "no_output_norm": ("output step not normalised per tensor", _lopt(normalize_output=False)),
    "no_mup": ("no muP step scaling (s = 1 for every tensor)", _lopt(mup=False)),
    "no_time": ("no fraction-of-training features (horizon always hidden)", {"hide_length": 1.0}),
    "no_orthogonalize": ("matrix steps not orthogonalised (the first shipped general)",
                         _lopt(orthogonalize=False)),
    "no_nominal": ("no Adam term in the direction (purely learned)", _lopt(nominal=0.0)),
    "no_augment": ("no task augmentation", {"families": NO_AUGMENT}),
    "one_family": ("one family (MLP 32x2 with augmentation) with the whole population",
                   {"families": ONE_FAMILY}),
    # the episode range of config general_fast (one definition of the short range)
    "short_episodes": ("episodes 100-400 steps instead of 100-2000",
                       {"max_episode_length": get_config("general_fast").max_episode_length}),
    "nres": ("NRES instead of PES", {"estimator": "nres"}),
    "dmd": ("DMD features of the last 8 gradients (rank 3) added", _lopt(dmd_window=8, dmd_rank=3)),
}


def variant_config(name: str, outer_steps: int, seed: int):
    base = get_config("general")
    over = VARIANTS[name][1]
    if "lopt_config" in over:
        over = {**over, "lopt_config": {**base.lopt_config, **over["lopt_config"]}}
    return base.replace(outer_steps=outer_steps, eval_every=0, checkpoint_every=100, seed=seed,
                        **over)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outer-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="a subset of the variants")
    p.add_argument("--suite", action="append", help="held-out suites (default: %s)" % ", ".join(SUITES))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--max-tasks", type=int, default=2)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--reference-cache", default=None,
                   help="keep tuned Adam's runs here for the next bench of the same suites "
                        "(e.g. runs/refcache; the scores are the same with or without it)")
    args = p.parse_args(argv)
    compile_cache.enable()
    from meta_train.evaluation.bench import run_bench
    from meta_train.run import OPTIMIZER_FILE, train

    names = args.only or list(VARIANTS)
    walls = {}
    for name in names:
        run_dir = os.path.join(args.out, name)
        opt = os.path.join(run_dir, OPTIMIZER_FILE)
        cfg = variant_config(name, args.outer_steps, args.seed)
        if os.path.exists(opt):
            print(f"{name}: trained earlier ({opt})", flush=True)
            walls[name] = json.load(open(os.path.join(run_dir, "wall.json")))["wall_s"]
            continue
        print(f"{name}: {VARIANTS[name][0]} -- meta-training {args.outer_steps} outer steps", flush=True)
        t0 = time.time()
        train(cfg, run_dir, resume=True, progress=False)
        walls[name] = round(time.time() - t0, 1)
        with open(os.path.join(run_dir, "wall.json"), "w") as f:
            json.dump({"wall_s": walls[name], "config": dataclasses.asdict(cfg)}, f)
        print(f"{name}: {walls[name]:.0f} s", flush=True)

    paths = [os.path.join(args.out, n, OPTIMIZER_FILE) for n in names]
    r = run_bench(paths, args.suite or list(SUITES), out_dir=os.path.join(args.out, "bench"),
                  seeds=args.seeds, max_tasks=args.max_tasks, baselines=(), guard=False,
                  progress=lambda m: print("  bench", m, flush=True), reference_cache=args.reference_cache,
                  command="python benchmarks/ablation.py " + " ".join(argv or sys.argv[1:]))
    by_label = {row["optimizer"]: row for row in r["leaderboard"]}
    from meta_train.evaluation.compare import load_entries
    labels = {n: e.label for n, e in zip(names, load_entries(paths)[0])}   # bench's labels
    suites = [rec["suite"] for rec in r["records"]]
    lines = ["# Ablation of the general optimizer's ingredients", "",
             f"Each variant: the `general` config with one ingredient switched, {args.outer_steps} outer "
             f"steps, seed {args.seed}, the same population; scored by `lopt bench` (unguarded; "
             f"{args.max_tasks} tasks x {args.seeds} seeds per suite) as the IQM speedup over tuned Adam "
             "[95% stratified-bootstrap CI]. Command: `python benchmarks/ablation.py "
             + " ".join(argv or sys.argv[1:]) + "`.", "",
             "| variant | switched | meta-train s | all suites | faster | worst final | "
             + " | ".join(f"`{s}`" for s in suites) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(suites)]
    for n in names:
        row = by_label[labels[n]]
        o = row["overall"]
        cells = [f"{row['suites'][s]['iqm'].value:.2f} [{row['suites'][s]['iqm'].low:.2f}, "
                 f"{row['suites'][s]['iqm'].high:.2f}]" if s in row["suites"] else "-" for s in suites]
        lines.append(f"| {n} | {VARIANTS[n][0]} | {walls.get(n, float('nan')):.0f} | "
                     f"{o['iqm'].value:.2f} [{o['iqm'].low:.2f}, {o['iqm'].high:.2f}] | "
                     f"{o['frac_faster'].value:.0%} | {row['worst_final_ratio']:.3g} | " + " | ".join(cells) + " |")
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
