"""`lopt report`: a self-contained Markdown report with PNG plots comparing one or more learned
optimizers, their loss-guarded versions, Adam (lr=1e-3 and tuned per task) and tuned baselines
on held-out suites: unseen tasks of the meta-training family, a horizon ``long_factor`` times
longer, and tasks outside the family (``tasks.suites``, run by ``meta_train.evaluation.compare``).
Headline figure: speedup over tuned Adam (``meta_train.evaluation.speedup``); also final loss relative to tuned Adam, cost per step
relative to Adam, the guards' fallback and switch rates, meta-training curves, the command and package versions."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import time

import jax
import numpy as np

import tasks
from learned_opt.baselines import LR_GRIDS
from learned_opt.files import atomic_write_text, read_jsonl
from learned_opt.loss_guard import guarded
from learned_opt.trajectory_guard import trajectory_guarded
from learned_opt.shipped import resolve
from meta_train.evaluation import compare as cmp
from meta_train.evaluation import curves as ev
from meta_train.evaluation import speedup as sp
from meta_train.evaluation.plots import plot_speedup, plot_suite
from tasks.suites import get_suite, suites_for


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return "diverged" if not np.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _versions() -> str:
    out = []
    for n in ("jax", "jaxlib", "optax", "dm-haiku", "numpy"):
        try:
            out.append(f"{n} {importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def _speedup_median(agg: dict) -> str:
    """Median speedup, marked ≥ when it is a lower bound (censored tasks at or below it)."""
    return ("≥" if agg["median_is_bound"] else "") + f"{agg['median']:.2f}"


def _speedup_cell(agg: dict) -> str:
    return f"{_speedup_median(agg)} [{agg['q25']:.2f}, {agg['q75']:.2f}]"


def summarize_suite(res: dict) -> list[dict]:
    """The numbers of a suite's table and of report.json (a new report column is a key here and a cell
    in :func:`_suite_section`). Per optimizer: speedup over tuned Adam at the last step, and final training loss (at
    the final parameters, mean over seeds) relative to tuned Adam's, on each task and aggregated."""
    mean = {k: v.mean(axis=-1) for k, v in res["final"].items()}
    ref = mean[cmp.ADAM_TUNED]
    ref_test = res["test"][cmp.ADAM_TUNED].mean(axis=-1)
    rows = []
    for label in res["labels"]:
        fin = np.where(np.isfinite(mean[label]), mean[label], np.inf)
        ratio = fin / ref
        t = res["test"][label].mean(axis=-1)
        test_ratio = np.where(np.isfinite(t), t / ref_test, np.inf)
        fb = res["fallback"].get(label)
        per_task = [s[0] for s in cmp.speedups(res, label)]
        rows.append({
            "optimizer": label,
            "guard": res.get("guard", {}).get(label),
            "speedup": sp.aggregate(per_task),
            "speedups": [s.value for s in per_task],
            "speedups_text": [sp.fmt(s) for s in per_task],
            "median_ratio": float(np.median(ratio)),
            "q25_ratio": float(np.quantile(ratio, 0.25)),
            "q75_ratio": float(np.quantile(ratio, 0.75)),
            "worst_ratio": float(np.max(ratio)),
            "beats_tuned_adam": int(np.sum(fin < ref)),
            "num_tasks": int(len(fin)),
            "median_test_ratio": float(np.median(test_ratio)),
            "diverged": int(np.sum(~np.isfinite(fin))),
            "fallback_rate": None if fb is None else float(np.mean(fb)),
            "final_losses": [float(x) for x in fin],
            "tuned_lr": None if label not in res["tuned_lr"] else [float(x) for x in res["tuned_lr"][label]],
        })
    return rows


def _suite_section(res: dict, rows: list[dict], pngs: tuple[str, str]) -> list[str]:
    s = res["suite"]
    measure = (" Curves and speedups use the tasks' exact expected training loss, not the "
               "batch's noisy one." if s.curve == "expected" else "")
    lines = [f"## Suite `{s.name}`", "", s.title + f"; {res['num_seeds']} seeds per task.{measure}", "",
             "| optimizer | speedup over tuned Adam: median [q25, q75] | tasks faster than Adam | "
             "final loss / tuned Adam: median | worst task | test loss / tuned Adam (median) | "
             "diverged | guard rate (steps on Adam's proposal / checks that switched) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["speedup"]
        lines.append(
            f"| {r['optimizer']} | {_speedup_cell(a)} | {round(a['frac_faster'] * a['num_tasks'])}/"
            f"{a['num_tasks']} | {_fmt(r['median_ratio'])} | {_fmt(r['worst_ratio'])} "
            f"| {_fmt(r['median_test_ratio'])} | {a['diverged']} | {_pct(r['fallback_rate'])} |")
    lines += ["", f"![{s.name} curves]({pngs[0]}) ![{s.name} speedup]({pngs[1]})", "",
              "<details><summary>per task: speedup over tuned Adam at the last step, final training "
              "loss (seed mean), tuned learning rates</summary>", "",
              "| task | " + " | ".join(r["optimizer"] for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for i, name in enumerate(res["task_labels"]):
        lines.append(f"| {name} | " + " | ".join(
            f"{r['speedups_text'][i]}, {_fmt(r['final_losses'][i], 4)}"
            + ("" if r["tuned_lr"] is None else f", lr {r['tuned_lr'][i]:.3g}") for r in rows) + " |")
    lines += ["", "</details>", ""]
    return lines


def _speedup_medians(res: dict, points: int = 40):
    """Steps t (log-spaced over the horizon) and, per optimizer, the median speedup at t."""
    T = res["suite"].num_steps
    steps = np.unique(np.geomspace(max(2, T // 20), T, points).astype(int))
    return steps, {label: np.median([[x.value for x in per_t] for per_t in cmp.speedups(res, label, steps)],
                                    axis=0) for label in res["labels"]}


def step_costs(suite, entries, guard=True, num_steps: int = 200, repeats: int = 3) -> list[tuple[str, float]]:
    """Wall time per training step on the suite's first task relative to Adam's: one jitted
    scan of ``num_steps`` steps per optimizer (and behind each guard of ``guard``, see
    ``compare.guard_kinds``), best of ``repeats``."""
    cfgs, keys = suite.tasks(1)
    task = suite.task_family.task(jax.tree.map(lambda x: x[0], cfgs))

    def cost(tx, g=False):
        run = jax.jit(lambda k: ev.run_task(task, tx, k, num_steps, guard=g)[0])
        jax.block_until_ready(run(keys[0]))
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(keys[0]))
            best = min(best, time.perf_counter() - t0)
        return best

    import optax
    adam = cost(optax.adam(1e-3))
    out = [("Adam", 1.0)]
    for e in entries:
        out.append((e.label, cost(e.lopt.as_optax(e.theta)) / adam))
        for kind in cmp.guard_kinds(guard):
            tx = (guarded(e.lopt, e.theta, optax.adam(1e-3)) if kind == "step" else
                  trajectory_guarded(e.lopt, e.theta, optax.adam(1e-3), num_steps=num_steps))
            out.append((e.label + cmp.GUARD_SUFFIX[kind], cost(tx, True) / adam))
    return out


def evaluate_suite(suite, entries, out_dir: str, guard=True, progress=None, seeds: int = 3,
                   baselines=cmp.DEFAULT_BASELINES, adam_factor: int = 4, num_tasks: int | None = None,
                   reference_cache: str | None = None):
    """One suite of a report (or of ``lopt bench``): ``compare.run_suite`` (on a long-horizon
    suite with no baselines besides Adam and Adam's reference at most 2x the horizon, to bound
    the cost), :func:`summarize_suite`, and its two PNGs written into ``out_dir``; Adam's runs
    from/to ``reference_cache`` (``compare.run_suite``). Returns (res, rows, (curves png,
    speedup png))."""
    long = suite.kind == "long_horizon"
    res = cmp.run_suite(suite, entries, guard=guard, progress=progress, num_seeds=seeds,
                        baselines=() if long else baselines,
                        adam_factor=min(2, adam_factor) if long else adam_factor, num_tasks=num_tasks,
                        reference_cache=reference_cache)
    rows = summarize_suite(res)
    pngs = (f"suite_{suite.name}.png", f"speedup_{suite.name}.png")
    mean_curves = {k: v.mean(axis=1) for k, v in res["curves"].items()}
    plot_suite(mean_curves, ev.final_loss(mean_curves[cmp.ADAM_TUNED]), os.path.join(out_dir, pngs[0]),
               f"{suite.name}: {len(res['task_labels'])} tasks x {res['num_seeds']} seeds, "
               f"{suite.num_steps} steps", window=res["window"])
    steps, medians = _speedup_medians(res)
    plot_speedup(steps, medians, os.path.join(out_dir, pngs[1]), f"{suite.name}: speedup over tuned Adam")
    return res, rows, pngs


def _meta_training_section(paths, entries, metas, out_dir) -> list[str]:
    lines = ["## The learned optimizers", "",
             "| optimizer | checkpoint | meta-training family | outer steps | held-out eval during "
             "meta-training (mean normalised loss) |", "|---|---|---|---|---|"]
    images = []
    for p, e, meta in zip(paths, entries, metas):
        tc = meta.get("train_config") or {}
        run_dir = os.path.dirname(os.path.abspath(p))
        evals = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "eval_mean_loss" in r]
        ev_txt = (f"{evals[0]['eval_mean_loss']:.4f} (step {evals[0]['step']}) -> "
                  f"{evals[-1]['eval_mean_loss']:.4f} (step {evals[-1]['step']})") if evals else "-"
        lines.append(f"| {e.label} | `{p}` | `{tc.get('family', '?')}` | {meta.get('outer_steps', '?')} "
                     f"| {ev_txt} |")
        png = os.path.join(run_dir, "meta_training.png")
        if os.path.exists(png):
            images.append(f"![meta-training of {e.label}]({os.path.relpath(png, out_dir)})")
    return lines + [""] + images + [""]


def _headline(results, entries) -> list[str]:
    """One row per learned optimizer (and guarded version): median speedup and worst final-loss
    ratio per suite."""
    names = [res["suite"].name for res, _, _ in results]
    lines = ["## Summary", "",
             "Median speedup over tuned Adam at the last step [tasks faster than Adam] (the worst "
             "task's final loss / tuned Adam's).", "",
             "| optimizer | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    labels = [lab for e in entries for lab in (e.label, *(e.label + x for x in cmp.GUARD_SUFFIX.values()))]
    for _, rows, _ in results:
        labels += [r["optimizer"] for r in rows if r["optimizer"] not in labels + [cmp.ADAM_DEFAULT]]
    for lab in labels:
        cells = []
        for _, rows, _ in results:
            r = next((r for r in rows if r["optimizer"] == lab), None)
            if r is None:
                cells.append("-")
                continue
            a = r["speedup"]
            cells.append(f"{_speedup_median(a)} [{round(a['frac_faster'] * a['num_tasks'])}/"
                         f"{a['num_tasks']}] (worst {_fmt(r['worst_ratio'], 2)})")
        if any(c != "-" for c in cells):
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(checkpoints, out_dir: str, num_tasks: int = 8, num_steps: int | None = None,
                 long_factor: int = 5, ood_tasks: int = 4, guard=True,
                 command: str | None = None, progress=None, suite_names=None, seeds: int = 3,
                 baselines=cmp.DEFAULT_BASELINES, adam_factor: int = 4) -> dict:
    """Evaluate ``checkpoints`` (one path or a list) on the held-out suites of the first
    checkpoint's meta-training family, or on the named suites ``suite_names`` (see
    ``tasks.suites``), with ``seeds`` seeds per task; Adam's reference runs ``adam_factor`` times
    the horizon (2x and no other baselines on the long-horizon suite, to bound the cost).
    Writes report.md, report.json and two PNGs per suite."""
    paths = [resolve(p) for p in ([checkpoints] if isinstance(checkpoints, str) else checkpoints)]
    cmp.check_baselines(baselines)
    entries, metas = cmp.load_entries(paths)
    tc = metas[0].get("train_config") or {}
    if "family" not in tc:
        raise tasks.TaskError(f"{paths[0]} does not record its meta-training family; "
                              "it cannot be evaluated on held-out tasks of its family")
    others = {m.get("train_config", {}).get("family") for m in metas[1:]} - {tc["family"]}
    if suite_names:
        suites = [get_suite(n) for n in suite_names]
    elif others:
        raise tasks.TaskError(f"checkpoints were meta-trained on different families "
                              f"({tc['family']!r} and {sorted(map(str, others))}); report them separately "
                              "or on named suites (--suite)")
    else:
        suites = suites_for(tc["family"], tc.get("family_kwargs", {}), num_tasks, num_steps, long_factor,
                            ood_tasks, tc.get("min_episode_length", "?"),
                            int(tc.get("max_episode_length", 400)))
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    results, summary = [], {}
    for suite in suites:
        res, rows, pngs = evaluate_suite(suite, entries, out_dir, guard=guard, progress=progress,
                                         seeds=seeds, baselines=baselines, adam_factor=adam_factor)
        results.append((res, rows, pngs))
        summary[suite.name] = rows
    if progress:
        progress("cost per step")
    costs = step_costs(suites[0], entries, guard)
    wall = time.time() - t0

    names = ", ".join(f"`{e.label}`" for e in entries)
    adam_grid = ", ".join(f"{x:g}" for x in LR_GRIDS["adam"])
    lines = [f"# Learned optimizer report: {names} on `{tc['family']}`", "",
             "Every optimizer trains the same tasks from the same initialisations on the same batches, "
             f"{seeds} seeds per task.", "",
             "**Speedup over tuned Adam** at step t (the learned_optimization / VeLO metric): Adam runs "
             f"every learning rate of {{{adam_grid}}} for {adam_factor}x the horizon ({min(2, adam_factor)}x "
             "on the long-horizon suite); per task its seed-averaged, smoothed training curves give a "
             "lower envelope over learning rates, made monotone, which maps a loss to the number of Adam "
             "steps needed to reach it. An optimizer's speedup at t is that number for its own "
             "(seed-averaged, equally smoothed) loss at t, divided by t. Above 1 = faster than Adam with "
             "the best learning rate chosen in hindsight at every step (so tuned Adam itself scores a "
             "little below 1). A value marked ≥ is censored: the optimizer got below everything Adam "
             "reached in its longer run; medians count such tasks at their lower bound. "
             "`diverged` = non-finite or ending above the initial loss.", "",
             "**Final loss** is the training loss at the parameters the run ends with (over the whole "
             "training split; for the synthetic quadratics its expectation; mean over seeds) divided by tuned Adam's on the "
             "same task (below 1 = better). Adam and each baseline (`NAME tuned`) are tuned per task on the "
             "mean training loss over the last 5% of steps, over a half-decade log grid (`learned_opt."
             "baselines.LR_GRIDS`). Both guards fall back to Adam at the task's tuned learning rate. "
             "`+guard` is the per-step loss guard (LGL2O): each step the learned optimizer and Adam both "
             "propose parameters from the same point, their losses are compared on a fresh guard batch "
             "and the lower is kept; its rate is the fraction of steps that took Adam's proposal. "
             "`+traj-guard` is the trajectory guard: tuned Adam runs its own trajectory alongside, and at "
             f"checks (every {results[0][0]['check_every']} steps and the last) the run moves onto Adam's "
             "parameters when its smoothed guard-batch loss trails Adam's by more than 5%, and after the "
             "last step it keeps the learned parameters only if their final training loss is within 5% "
             "of Adam's; its rate is the fraction of checks that switched. A guarded run's training curve is the trajectory it "
             "followed (its speedup is measured on it), except that a run whose last check switched "
             "returns Adam's final parameters and is scored on Adam's last steps.", ""]
    lines += _headline(results, entries)
    for res, rows, pngs in results:
        lines += _suite_section(res, rows, pngs)
    lines += ["## Cost per step", "",
              f"Wall time of a training step on the first task of `{suites[0].name}` relative to Adam "
              f"(jitted scan of 200 steps, best of 3, {jax.devices()[0].platform}). The per-step guard "
              "adds two loss evaluations and Adam's update per step; the trajectory guard also Adam's own "
              "gradient (about 2x an unguarded step).", "",
              "| optimizer | time per step / Adam's |", "|---|---|"]
    lines += [f"| {label} | {c:.2f} |" for label, c in costs] + [""]
    lines += _meta_training_section(paths, entries, metas, out_dir)
    lines += ["## Reproduce", "", "```", command or ("lopt report " + " ".join(paths) + f" --out {out_dir}"),
              "```", "",
              f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} in {wall:.0f} s with "
              f"Python {platform.python_version()}, {_versions()}, on {platform.machine()} "
              f"({jax.devices()[0].platform}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores).", ""]
    text = "\n".join(lines)
    atomic_write_text(os.path.join(out_dir, "report.md"), text)
    data = json.dumps({"checkpoints": paths, "optimizers": [e.label for e in entries],
                       "suites": {s.name: {"description": s.title, "num_tasks": s.num_tasks,
                                           "num_steps": s.num_steps} for s in suites},
                       "summary": summary, "step_cost_vs_adam": dict(costs), "seeds": seeds,
                       "wall_s": wall}, indent=2)
    atomic_write_text(os.path.join(out_dir, "report.json"), data)
    return {"summary": summary, "path": os.path.join(out_dir, "report.md"),
            "optimizers": [e.label for e in entries], "wall_s": wall}


def summary_lines(rep: dict) -> list[str]:
    """A few lines for the terminal: each learned optimizer's median speedup over tuned Adam and
    median final loss / tuned Adam's, per suite."""
    out = []
    for suite, rows in rep["summary"].items():
        parts = [f"{r['optimizer']} {_speedup_median(r['speedup'])}x / {r['median_ratio']:.3f}"
                 for r in rows if r["optimizer"] in rep["optimizers"]
                 or cmp.unguarded_label(r["optimizer"]) in rep["optimizers"]]
        out.append(f"  {suite}: " + "; ".join(parts))
    return out


__all__ = ["write_report", "summary_lines", "evaluate_suite", "summarize_suite", "step_costs"]
