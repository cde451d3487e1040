"""`lopt bench`: every learned optimizer (default: every shipped one), unguarded and behind both
guards, and the tuned baselines, on every named suite (``tasks.suites.SUITES``: every task kind
the project has, 400 and 2000 steps), ranked in one leaderboard.

Per suite the work is that of a report suite (``report.evaluate_suite``: Adam's learning-rate
grid run 4x the horizon as the speedup's reference, Adam and each baseline tuned per task, the
learned optimizers as they are, behind the per-step loss guard and behind the trajectory guard,
both falling back to Adam at the task's tuned learning rate). The score of one run (task i,
seed j) is its speedup over tuned Adam at the last step (``speedup``: its own smoothed curve
against tuned Adam's seed-averaged reference; 0 when diverged, the censoring bound when it got
below everything Adam reached). ``stats`` turns the (seeds, tasks) score matrices into the
interquartile mean with a stratified-bootstrap 95% interval, the fraction of tasks faster than
tuned Adam with its interval, and performance profiles, per suite and over all suites' tasks
together.

The guard table puts both guards side by side: per suite, the worst task's final training loss
(at the final parameters, seed mean) relative to tuned Adam's, the worst single run's, and how
often each guard acted; then the cost of a step relative to Adam.

Each suite's numbers are written to ``<out>/suites/<name>.json`` as soon as it is done and
reused by a rerun with the same settings, so a killed bench resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import time

import jax
import numpy as np

from learned_opt.errors import LearnedOptError
from learned_opt.files import atomic_write_text
from learned_opt.shipped import resolve, shipped_names
from learned_opt.trajectory_guard import (DEFAULT_CHECK_EVERY, DEFAULT_INTERIM_TOLERANCE,
                                          DEFAULT_KEEP_STATE, DEFAULT_TOLERANCE)
from meta_train.evaluation import compare as cmp
from meta_train.evaluation.curves import DEFER_LAST_CHECK
from meta_train.evaluation import report as rp
from meta_train.evaluation import speedup as sp
from meta_train.evaluation import stats
from meta_train.evaluation.plots import plot_profiles
from tasks.suites import HELDOUT_SEED, SUITES, get_suite

# CPU-sized default vs --full: seeds per task, tasks per suite (None = all), baselines.
DEFAULT = {"seeds": 2, "max_tasks": 2, "baselines": cmp.DEFAULT_BASELINES, "adam_factor": 4}
FULL = {"seeds": 3, "max_tasks": None, "baselines": cmp.DEFAULT_BASELINES, "adam_factor": 4}
TOLERANCE = 1.05       # the trajectory guard's promise: final loss <= 1.05 x tuned Adam's
FORMAT = "lopt-bench-suite v1"


def run_scores(res: dict, label: str) -> np.ndarray:
    """(seeds, tasks) speedups over tuned Adam at the last step, one per run: seed j's own curve
    on task i against task i's reference envelope (``speedup.speedup_curve`` on one seed)."""
    c = res["curves"][label]
    out = np.zeros((c.shape[1], c.shape[0]))
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            out[j, i] = sp.speedup_curve(c[i, j][None], res["envelopes"][i], res["window"])[0].value
    return out


def final_ratios(res: dict, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Final training loss (at the final parameters) relative to tuned Adam's: per task (seed
    means, (tasks,)) and per run ((tasks, seeds)); non-finite counts as inf."""
    fin = np.where(np.isfinite(res["final"][label]), res["final"][label], np.inf)
    ref = res["final"][cmp.ADAM_TUNED]
    return fin.mean(axis=1) / ref.mean(axis=1), fin / ref


def suite_record(res: dict, rows: list[dict], pngs, settings: dict) -> dict:
    """What the leaderboard needs from one suite, JSON-able."""
    s = res["suite"]
    by_label = {r["optimizer"]: r for r in rows}
    opts = {}
    for label in res["labels"]:
        task_ratio, run_ratio = final_ratios(res, label)
        fb = res["fallback"].get(label)
        opts[label] = {"scores": run_scores(res, label).tolist(),
                       "final_ratio": [float(x) for x in task_ratio],
                       "worst_run_ratio": float(np.max(run_ratio)),
                       "diverged_runs": int(np.sum(~np.isfinite(run_ratio))),
                       "guard": res["guard"].get(label),
                       "guard_rate": None if fb is None else float(np.mean(fb)),
                       "on_fallback_runs": (int(np.sum(res["on_fallback"][label]))
                                            if label in res.get("on_fallback", {}) else None),
                       "median_speedup": by_label[label]["speedup"]["median"],
                       # per task, the seed-mean curve's speedup (the suite section's and `lopt report`'s)
                       "task_speedups": list(by_label[label]["speedups"])}
    return {"format": FORMAT, "settings": settings, "suite": s.name, "kind": s.kind,
            "description": s.title, "num_tasks": len(res["task_labels"]), "num_steps": s.num_steps,
            "num_seeds": res["num_seeds"], "optimizers": opts,
            "section": rp._suite_section(res, rows, pngs)}


def _settings(paths, cfg, suite) -> dict:
    digests = []
    for p in paths:
        with open(p, "rb") as f:
            digests.append(hashlib.sha256(f.read()).hexdigest()[:16])
    settings = {"optimizers": digests, "seeds": cfg["seeds"], "max_tasks": cfg["max_tasks"],
                "baselines": list(cfg["baselines"]), "adam_factor": cfg["adam_factor"],
                "guards": list(cfg["guards"]), "suite": [suite.family, suite.family_kwargs, suite.num_tasks, suite.num_steps, suite.seed],
                # the trajectory guard's rule: a record made under another rule is run again
                "trajectory_guard": {"check_every": DEFAULT_CHECK_EVERY, "tolerance": DEFAULT_TOLERANCE,
                                     "interim_tolerance": DEFAULT_INTERIM_TOLERANCE, "keep_state": DEFAULT_KEEP_STATE,
                                     "scored_on_fallback": True, "defer_last_check": DEFER_LAST_CHECK}}
    if suite.curve != "batch":   # curves of the expected loss (2026-12-01): older records are rerun
        settings["curve"] = suite.curve
    return settings


def _load_record(path: str, settings: dict) -> dict | None:
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if rec.get("format") == FORMAT and rec.get("settings") == settings else None


def leaderboard(records: list[dict], reps: int = stats.DEFAULT_REPS) -> list[dict]:
    """One row per optimizer, ranked by the IQM speedup over the tasks of every suite it ran on:
    {"optimizer", "overall": {"iqm", "frac_faster"}, "suites": {name: {...}} (the suites it ran
    on; the tuned baselines skip the long-horizon suite), "num_suites", "worst_final_ratio",
    "guard"}."""
    labels = list(dict.fromkeys(lab for r in records for lab in r["optimizers"]))
    per_suite = {r["suite"]: stats.interval_estimates(
        {lab: np.asarray(o["scores"]) for lab, o in r["optimizers"].items()}, reps=reps) for r in records}

    def having(lab):
        return [r for r in records if lab in r["optimizers"]]

    overall = stats.interval_estimates(
        {lab: np.concatenate([np.asarray(r["optimizers"][lab]["scores"]) for r in having(lab)], axis=1)
         for lab in labels}, reps=reps)
    rows = [{"optimizer": lab, "overall": overall[lab], "num_suites": len(having(lab)),
             "suites": {r["suite"]: per_suite[r["suite"]][lab] for r in having(lab)},
             "worst_final_ratio": max(max(r["optimizers"][lab]["final_ratio"]) for r in having(lab)),
             "guard": having(lab)[0]["optimizers"][lab]["guard"]} for lab in labels]
    return sorted(rows, key=lambda r: -r["overall"]["iqm"].value)


def _est(e: stats.Estimate) -> str:
    return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"


def _frac(e: stats.Estimate) -> str:
    return f"{100 * e.value:.0f}% [{100 * e.low:.0f}, {100 * e.high:.0f}]"


def _ratio(x: float) -> str:
    return "diverged" if not np.isfinite(x) else f"{x:.3f}"


def guard_table(records: list[dict], entries_labels: list[str]) -> list[dict]:
    """Per learned optimizer and suite: worst task / worst run final-loss ratio and the guard's
    rate, unguarded, per-step guard, trajectory guard."""
    out = []
    for base in entries_labels:
        for r in records:
            row = {"optimizer": base, "suite": r["suite"]}
            for kind, suffix in (("none", ""), *cmp.GUARD_SUFFIX.items()):
                o = r["optimizers"].get(base + suffix)
                if o is not None:
                    row[kind] = {"worst_task": max(o["final_ratio"]), "worst_run": o["worst_run_ratio"],
                                 "over": int(sum(x > TOLERANCE for x in o["final_ratio"])),
                                 "tasks": len(o["final_ratio"]), "rate": o["guard_rate"],
                                 "ended_on_fallback": o.get("on_fallback_runs")}
            out.append(row)
    return out


def keep_existing_plots(text: str, folder: str) -> str:
    """``text`` with each image link ``![alt](file)`` whose file is not in ``folder`` replaced by a
    note: a suite reused from another output folder (two benches merged into one) leaves its
    plots behind, and a leaderboard must not link plots it does not have."""
    def one(m):
        target = m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or os.path.exists(os.path.join(folder, target)):
            return m.group(0)
        return f"*({m.group(1)}: plot `{target}` not in this folder)*"
    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", one, text)


def bench_suites(suite_names=None, held_out: bool = False) -> list:
    """The named suites (default: all); with ``held_out`` their tasks, initialisations and batches
    come from ``tasks.suites.HELDOUT_SEED`` instead: the same kinds of problem, none of the
    bench's own tasks (an out-of-sample check of anything chosen by looking at the bench)."""
    suites = [get_suite(n) for n in (suite_names or list(SUITES))]
    return [dataclasses.replace(s, seed=HELDOUT_SEED) for s in suites] if held_out else suites


def run_bench(optimizers=None, suite_names=None, out_dir: str = "runs/bench", full: bool = False,
              seeds: int | None = None, max_tasks: int | None = None, reps: int = stats.DEFAULT_REPS,
              progress=None, command: str | None = None, baselines=None, guard=True,
              held_out: bool = False, reference_cache: str | None = None) -> dict:
    """Run (or resume) the bench and write ``leaderboard.md``, ``bench.json`` and the plots into
    ``out_dir``. ``optimizers``: checkpoint paths or shipped names (default: all shipped);
    ``suite_names``: default all named suites; ``full``: all tasks of each suite and 3 seeds
    (default: the first 2 tasks, 2 seeds); ``seeds``/``max_tasks``/``baselines`` (names of
    ``learned_opt.baselines.LR_GRIDS`` besides Adam) override either; ``guard``: which guards
    (``compare.guard_kinds``: True = both, False = none); ``held_out``: the suites' held-out
    tasks (:func:`bench_suites`); ``reference_cache``: a directory where Adam's runs on each
    suite are kept for the next bench of the same suites (``meta_train.evaluation.references``;
    the results are the same with or without it)."""
    names = list(optimizers or shipped_names())
    if not names:
        raise LearnedOptError("no optimizers to benchmark: none shipped and none given")
    paths = [resolve(n) for n in names]
    suites = bench_suites(suite_names, held_out)
    cfg = dict(FULL if full else DEFAULT)
    cfg["held_out"] = held_out
    if seeds is not None:
        cfg["seeds"] = seeds
    if max_tasks is not None:
        cfg["max_tasks"] = max_tasks
    if baselines is not None:
        cfg["baselines"] = cmp.check_baselines(baselines)
    cfg["guards"] = cmp.guard_kinds(guard)
    if cfg["seeds"] < 2:
        raise LearnedOptError("the bench needs at least 2 seeds per task (the bootstrap resamples seeds)")
    entries, _ = cmp.load_entries(paths)
    os.makedirs(os.path.join(out_dir, "suites"), exist_ok=True)
    say = progress or (lambda msg: None)
    t0 = time.time()
    records = []
    for k, suite in enumerate(suites):
        settings = _settings(paths, cfg, suite)
        path = os.path.join(out_dir, "suites", f"{suite.name}.json")
        rec = _load_record(path, settings)
        if rec is not None:
            say(f"[{k + 1}/{len(suites)}] {suite.name}: done earlier, reusing {path}")
        else:
            n = None if cfg["max_tasks"] is None else min(cfg["max_tasks"], suite.num_tasks)
            say(f"[{k + 1}/{len(suites)}] {suite.name} ({time.time() - t0:.0f} s so far)")
            res, rows, pngs = rp.evaluate_suite(
                suite, entries, out_dir, guard=cfg["guards"], progress=say, seeds=cfg["seeds"],
                baselines=cfg["baselines"], adam_factor=cfg["adam_factor"], num_tasks=n,
                reference_cache=reference_cache)
            rec = suite_record(res, rows, pngs, settings)
            atomic_write_text(path, json.dumps(rec))
        records.append(rec)
    say("statistics (stratified bootstrap)")
    board = leaderboard(records, reps)
    profiles = stats.performance_profiles(
        {r["optimizer"]: np.concatenate([np.asarray(x["optimizers"][r["optimizer"]]["scores"])
                                         for x in records if r["optimizer"] in x["optimizers"]], axis=1)
         for r in board}, reps=reps)
    plot_profiles(stats.DEFAULT_TAUS, {lab: profiles[lab] for lab in profiles},
                  os.path.join(out_dir, "profiles.png"),
                  f"performance profiles over {sum(r['num_tasks'] for r in records)} tasks x "
                  f"{cfg['seeds']} seeds ({len(records)} suites)")
    say("cost per step")
    costs = rp.step_costs(suites[0], entries, guard=cfg["guards"])
    guards = guard_table(records, [e.label for e in entries])
    wall = time.time() - t0
    text = keep_existing_plots(render(records, board, guards, costs, cfg, full, wall, command, paths, reps),
                               out_dir)
    atomic_write_text(os.path.join(out_dir, "leaderboard.md"), text)
    data = {"optimizers": [e.label for e in entries], "checkpoints": names, "settings": cfg | {"full": full},
            "leaderboard": [{"optimizer": r["optimizer"], "guard": r["guard"], "num_suites": r["num_suites"],
                             "worst_final_ratio": r["worst_final_ratio"],
                             "overall": {k: vars(v) for k, v in r["overall"].items()},
                             "suites": {s: {k: vars(v) for k, v in e.items()} for s, e in r["suites"].items()}}
                            for r in board],
            "guards": guards, "step_cost_vs_adam": dict(costs), "wall_s": wall}
    atomic_write_text(os.path.join(out_dir, "bench.json"), json.dumps(data, indent=1))
    return {"path": os.path.join(out_dir, "leaderboard.md"), "leaderboard": board, "guards": guards,
            "costs": costs, "wall_s": wall, "records": records}


def suite_speedups(o: dict) -> tuple[float, np.ndarray, bool]:
    """One optimizer's record on one suite -> (median speedup, per-task speedups, exact): the
    suite's own statistic, each task scored on its seed-mean curve as the suite's section and
    `lopt report` score it. Records written before 2026-12-03 lack the per-task values; their
    tasks are then the means of the seeds' own scores (``exact`` False)."""
    if "task_speedups" in o:
        return float(o["median_speedup"]), np.asarray(o["task_speedups"], float), True
    return float(o["median_speedup"]), np.asarray(o["scores"]).mean(axis=0), False


def learned_table(records: list[dict], board: list[dict]) -> list[str]:
    """Per learned optimizer (unguarded and guarded) and suite: median speedup over tuned Adam
    (the suite's own statistic, :func:`suite_speedups`), tasks faster, worst task's final-loss
    ratio, diverged runs."""
    learned = [r["optimizer"] for r in board if r["guard"] is not None or any(
        r["optimizer"] + suffix in rec["optimizers"] for rec in records
        for suffix in cmp.GUARD_SUFFIX.values())]
    if not learned:
        return []
    lines = ["## Learned optimizers, suite by suite", "",
             "Median speedup over tuned Adam over tasks, each task scored on its seed-mean loss curve "
             "(the statistic of the suite sections below and of `lopt report`; the IQM above scores "
             "every run on its own curve), tasks faster than tuned Adam, the worst task's final "
             "training loss / tuned Adam's, and runs that diverged (non-finite final loss).", "",
             "| optimizer | suite | median speedup | tasks faster | worst final | diverged runs |",
             "|---|---|---|---|---|---|"]
    any_old = False
    for label in sorted(learned):
        for rec in records:
            o = rec["optimizers"].get(label)
            if o is None:
                continue
            median, per_task, exact = suite_speedups(o)
            any_old = any_old or not exact
            diverged = o.get("diverged_runs", int(np.sum(np.asarray(o["scores"]) == 0)))
            old = "" if exact else "†"
            lines.append(f"| {label} | `{rec['suite']}` | {median:.2f} | "
                         f"{int(np.sum(per_task > 1))}/{len(per_task)}{old} | "
                         f"{_ratio(max(o['final_ratio']))} | {diverged} |")
    if any_old:
        lines += ["", "† a suite recorded before the per-task values were kept: tasks faster counts "
                  "tasks whose seeds' own scores average above 1."]
    return lines + [""]


def render(records, board, guards, costs, cfg, full, wall, command, paths, reps) -> str:
    names = [r["suite"] for r in records]
    n_tasks = sum(r["num_tasks"] for r in records)
    lines = ["# Learned optimizer benchmark", "",
             f"{len(records)} suites, {n_tasks} tasks, {cfg['seeds']} seeds per task "
             f"({'all tasks of each suite' if cfg['max_tasks'] is None else 'the first %d tasks of each suite' % cfg['max_tasks']}"
             f"{'' if full else '; `lopt bench --full` runs them all with 3 seeds'})"
             + (f"; **held-out tasks**: every suite's tasks, initialisations and batches drawn from "
                f"seed {HELDOUT_SEED} (`tasks.suites.HELDOUT_SEED`), none of the default bench's"
                if cfg.get("held_out") else "") + ".", "",
             "**Score** of a run: its speedup over tuned Adam at the last step (`meta_train.evaluation."
             "speedup`: how many steps Adam, with the best of 11 learning rates chosen in hindsight at "
             "every step, needs to reach the run's smoothed final loss, divided by the run's steps; > 1 "
             "is faster than tuned Adam, 0 = diverged, capped at Adam's reference length: 4x, 2x on "
             "the long-horizon suite). **IQM** = interquartile mean over tasks x seeds, with a 95% "
             f"stratified-bootstrap interval (seeds resampled within each task, {reps} replicates, "
             "`rliable`); **faster** = fraction of tasks whose seed-mean speedup is above 1, with its "
             "interval. Ranked by the IQM over all suites' tasks together (the tuned baselines other than "
             "Adam skip the long-horizon suite, to bound the cost: theirs is over the other suites). **worst final** = the "
             "worst task's final training loss (at the final parameters, seed mean) / tuned Adam's.", "",
             "`+guard` = per-step loss guard (LGL2O), `+traj-guard` = trajectory guard, both falling "
             "back to Adam at the task's tuned learning rate; `NAME tuned` = that optimizer with its "
             "learning rate tuned per task; `Adam lr=1e-3` = untuned Adam.", "",
             "## Leaderboard", "",
             "| rank | optimizer | IQM speedup, all suites | faster than tuned Adam | worst final | "
             + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for k, r in enumerate(board):
        partial = "" if r["num_suites"] == len(names) else f" ({r['num_suites']} of {len(names)} suites)"
        lines.append(f"| {k + 1} | {r['optimizer']}{partial} | {_est(r['overall']['iqm'])} | "
                     f"{_frac(r['overall']['frac_faster'])} | {_ratio(r['worst_final_ratio'])} | "
                     + " | ".join(_est(r["suites"][n]["iqm"]) if n in r["suites"] else "-"
                                  for n in names) + " |")
    lines += ["", "![performance profiles](profiles.png)", "",
              "Performance profile: the fraction of all runs (tasks x seeds) whose speedup over tuned "
              "Adam is above tau, with 95% bootstrap bands.", "",
              "## The guards: final loss relative to tuned Adam", "",
              f"The trajectory guard promises a final loss within 5% of its fallback's (here tuned Adam, "
              f"so <= {TOLERANCE} on every task). Per suite: the worst task's ratio (seed mean) / the worst "
              "single run's, the number of tasks above 1.05, and the guard's rate (per-step guard: "
              "fraction of steps on Adam's proposal; trajectory guard: fraction of checks that switched, and "
              "the runs that ended on Adam's final parameters, scored on Adam's last steps).",
              "", "| optimizer | suite | unguarded: worst task / run | +guard: worst task / run (> 1.05) "
              "| +guard rate | +traj-guard: worst task / run (> 1.05) | +traj-guard rate |",
              "|---|---|---|---|---|---|---|"]

    def cell(g):
        if g is None:
            return "-"
        return f"{_ratio(g['worst_task'])} / {_ratio(g['worst_run'])} ({g['over']}/{g['tasks']})"

    for g in guards:
        lines.append(f"| {g['optimizer']} | `{g['suite']}` | "
                     + (f"{_ratio(g['none']['worst_task'])} / {_ratio(g['none']['worst_run'])}" if "none" in g else "-")
                     + f" | {cell(g.get('step'))} | "
                     + ("-" if "step" not in g else f"{100 * g['step']['rate']:.1f}%")
                     + f" | {cell(g.get('trajectory'))} | "
                     + ("-" if "trajectory" not in g else f"{100 * g['trajectory']['rate']:.1f}%"
                        + ("" if g["trajectory"].get("ended_on_fallback") is None
                           else f" ({g['trajectory']['ended_on_fallback']} ended on Adam)")) + " |")
    worst = {kind: max((g[kind]["worst_task"] for g in guards if kind in g), default=None)
             for kind in ("none", "step", "trajectory")}
    lines += ["", "Worst task over every suite and optimizer: " + ", ".join(
        f"{label} {_ratio(worst[k])}" for k, label in (("none", "unguarded"), ("step", "+guard"),
                                                        ("trajectory", "+traj-guard")) if worst[k] is not None)
        + ".", "",
        "## Cost per step", "",
        f"Wall time of a training step on the first task of `{records[0]['suite']}` relative to Adam "
        f"(jitted scan of 200 steps, best of 3, {jax.devices()[0].platform}).", "",
        "| optimizer | time per step / Adam's |", "|---|---|"]
    lines += [f"| {label} | {c:.2f} |" for label, c in costs] + [""]
    lines += learned_table(records, board)
    lines += ["## Per suite", ""]
    for r in records:
        lines += [f"_Bench: the first {r['num_tasks']} tasks, {r['num_seeds']} seeds._", ""] + r["section"]
    lines += ["## Reproduce", "", "```", command or "lopt bench", "```", "",
              f"Optimizers: {', '.join(f'`{p}`' for p in paths)}. Generated "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}; this run's wall time {wall:.0f} s "
              f"(suites reused from an earlier run count 0) with Python {platform.python_version()}, "
              f"{rp._versions()}, on {platform.machine()} ({jax.devices()[0].platform}, "
              f"{os.cpu_count()} CPU cores).", ""]
    return "\n".join(lines)


def summary_lines(result: dict, top: int = 8) -> list[str]:
    """The top of the leaderboard for the terminal."""
    out = []
    for k, r in enumerate(result["leaderboard"][:top]):
        out.append(f"  {k + 1:2d}. {r['optimizer']:<28s} IQM speedup {_est(r['overall']['iqm'])}, "
                   f"faster on {_frac(r['overall']['frac_faster'])} of tasks, worst final "
                   f"{_ratio(r['worst_final_ratio'])}")
    return out


__all__ = ["run_bench", "leaderboard", "run_scores", "final_ratios", "guard_table", "summary_lines",
           "DEFAULT", "FULL", "TOLERANCE"]
