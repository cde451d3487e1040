"""`lopt report`: a Markdown report with PNG plots comparing a learned optimizer with
Adam (default learning rate, and tuned per task on a grid) on held-out tasks of its family."""
from __future__ import annotations

import datetime
import json
import os
import platform


import jax
import numpy as np

import learned_opt
import tasks
from meta_train import evaluate as ev
from meta_train.plots import plot_curves
from meta_train.run import read_metrics
from meta_train.state_io import atomic_write_bytes

HELD_OUT_SEED = 20_240_917  # disjoint from meta-training (config seed) and periodic eval streams


def held_out_cfgs(family, num_tasks: int, seed: int = HELD_OUT_SEED):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_tasks)
    cfgs = jax.vmap(family.sample)(keys[:num_tasks])
    return cfgs, keys[num_tasks:]


def _cfg_label(family, cfgs, i) -> str:
    leaves = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: np.asarray(x[i]), cfgs))[0]
    parts = []
    for path, v in leaves:
        name = jax.tree_util.keystr(path).strip("[]'\"")
        if name == "activation" and hasattr(family, "activations"):
            parts.append(f"{family.activations[int(v)]}")
        elif v.size == 1:
            parts.append(f"{name}={v.item():.3g}" if v.dtype.kind == "f" else f"{name}={v.item()}")
    return ", ".join(parts) if parts else f"task {i}"


def compare_on_family(lopt, theta, family, num_tasks: int, num_steps: int, seed: int = HELD_OUT_SEED):
    """Run the learned optimizer, Adam at its default lr and Adam over the grid on
    held-out tasks. Returns a dict of numpy arrays and per-task rows."""
    cfgs, keys = held_out_cfgs(family, num_tasks, seed)
    lo_curves, lo_test, _ = ev.family_curves(family, cfgs, keys, lambda th: lopt.as_optax(th), theta, num_steps)
    grid = np.asarray(ev.ADAM_LR_GRID, np.float32)
    grid_curves, grid_test, _ = ev.family_curves(family, cfgs, keys, ev.adam_tx, grid, num_steps, hparam_axis=0)
    default_i = int(np.argmin(np.abs(grid - ev.DEFAULT_ADAM_LR)))
    finals = ev.final_loss(grid_curves)                      # (lrs, tasks)
    best = np.argmin(finals, axis=0)                         # tuned per task on final training loss
    window = max(1, num_steps // 50)
    rows = []
    for i in range(num_tasks):
        lo, ad, at = lo_curves[i], grid_curves[default_i, i], grid_curves[best[i], i]
        rows.append({
            "task": _cfg_label(family, cfgs, i),
            "learned_final": float(ev.final_loss(lo)),
            "adam_default_final": float(ev.final_loss(ad)),
            "adam_tuned_final": float(ev.final_loss(at)),
            "adam_tuned_lr": float(grid[best[i]]),
            "learned_test": float(lo_test[i]),
            "adam_default_test": float(grid_test[default_i, i]),
            "adam_tuned_test": float(grid_test[best[i], i]),
            "steps_to_adam_default_final": ev.steps_to_reach(lo, float(ev.final_loss(ad)), window),
            "steps_to_adam_tuned_final": ev.steps_to_reach(lo, float(ev.final_loss(at)), window),
        })
    return {"rows": rows, "learned": lo_curves, "adam_default": grid_curves[default_i],
            "adam_tuned": np.stack([grid_curves[best[i], i] for i in range(num_tasks)]),
            "num_steps": num_steps, "window": window}


def _fmt(x):
    if x is None:
        return "never"
    if isinstance(x, float):
        return "diverged" if not np.isfinite(x) else f"{x:.4f}"
    return str(x)


def summarize(rows) -> dict:
    n = len(rows)
    beat_default = sum(r["learned_final"] < r["adam_default_final"] for r in rows)
    beat_tuned = sum(r["learned_final"] < r["adam_tuned_final"] for r in rows)
    ratio_d = [r["learned_final"] / r["adam_default_final"] for r in rows]
    ratio_t = [r["learned_final"] / r["adam_tuned_final"] for r in rows]
    return {"num_tasks": n, "beats_adam_default": beat_default, "beats_adam_tuned": beat_tuned,
            "median_final_ratio_vs_adam_default": float(np.median(ratio_d)),
            "median_final_ratio_vs_adam_tuned": float(np.median(ratio_t)),
            "diverged": sum(not np.isfinite(r["learned_final"]) for r in rows)}


def write_report(checkpoint: str, out_dir: str, num_tasks: int = 8, num_steps: int | None = None,
                 command: str | None = None) -> dict:
    lopt, theta, meta = learned_opt.load(checkpoint)
    tc = (meta or {}).get("train_config") or {}
    if "family" not in tc:
        raise tasks.TaskError(f"{checkpoint} does not record its meta-training family; "
                              "it cannot be evaluated on held-out tasks of its family")
    family = tasks.get_family(tc["family"], **tc.get("family_kwargs", {}))
    num_steps = int(num_steps or tc.get("max_episode_length", 400))
    os.makedirs(out_dir, exist_ok=True)
    res = compare_on_family(lopt, theta, family, num_tasks, num_steps)
    rows, summary = res["rows"], summarize(res["rows"])

    plot_curves({"learned": res["learned"], "Adam lr=1e-3": res["adam_default"],
                 "Adam tuned per task": res["adam_tuned"]},
                os.path.join(out_dir, "curves_all.png"),
                f"{tc['family']}: {num_tasks} held-out tasks (mean, min-max band)")
    per_task = []
    for i in range(min(num_tasks, 4)):
        name = f"curve_task{i}.png"
        plot_curves({"learned": ev.smooth(res["learned"][i], res["window"]),
                     "Adam lr=1e-3": ev.smooth(res["adam_default"][i], res["window"]),
                     f"Adam lr={rows[i]['adam_tuned_lr']:g}": ev.smooth(res["adam_tuned"][i], res["window"])},
                    os.path.join(out_dir, name), rows[i]["task"])
        per_task.append(name)

    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    meta_png = os.path.join(run_dir, "meta_training.png")
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    lines = [
        f"# Learned optimizer report: `{lopt.architecture}` on `{tc['family']}`", "",
        f"Checkpoint `{checkpoint}`, meta-trained for {meta.get('outer_steps', '?')} outer steps. "
        f"Held-out tasks: {num_tasks} tasks of the family sampled from a seed stream not used in "
        f"meta-training, {num_steps} steps each. Adam is run at its default learning rate (1e-3) "
        f"and tuned per task over {list(ev.ADAM_LR_GRID)} on the final training loss "
        f"(mean of the last 5% of steps).", "",
        "## Summary", "",
        f"- Learned optimizer beats Adam (lr=1e-3) on **{summary['beats_adam_default']}/{summary['num_tasks']}** "
        f"tasks; median final-loss ratio learned/Adam(1e-3) = **{summary['median_final_ratio_vs_adam_default']:.3f}**.",
        f"- Beats per-task tuned Adam on **{summary['beats_adam_tuned']}/{summary['num_tasks']}** tasks; "
        f"median ratio learned/tuned Adam = **{summary['median_final_ratio_vs_adam_tuned']:.3f}**.",
        f"- Diverged runs of the learned optimizer: {summary['diverged']}.", "",
        "![all tasks](curves_all.png)", "",
        "## Per task", "",
        "Final = mean training loss over the last 5% of steps; test = loss on the task's test split "
        "after the last step; *steps to reach* = first step where the learned optimizer's smoothed "
        "training loss is at or below Adam's final loss.", "",
        "| task | learned final | Adam 1e-3 final | tuned Adam final (lr) | learned test | Adam 1e-3 test "
        "| tuned Adam test | steps to Adam 1e-3 final | steps to tuned Adam final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {_fmt(r['learned_final'])} | {_fmt(r['adam_default_final'])} | "
            f"{_fmt(r['adam_tuned_final'])} ({r['adam_tuned_lr']:g}) | {_fmt(r['learned_test'])} | "
            f"{_fmt(r['adam_default_test'])} | {_fmt(r['adam_tuned_test'])} | "
            f"{_fmt(r['steps_to_adam_default_final'])} / {num_steps} | "
            f"{_fmt(r['steps_to_adam_tuned_final'])} / {num_steps} |")
    lines += [""] + [f"![task {i}]({p})" for i, p in enumerate(per_task)] + [""]
    if os.path.exists(meta_png):
        rel = os.path.relpath(meta_png, out_dir)
        lines += ["## Meta-training", "", f"![meta-training]({rel})", ""]
        evals = [r for r in records if "eval_mean_loss" in r]
        if evals:
            lines.append(f"Held-out evaluation during meta-training (mean normalised loss): "
                         f"{evals[0]['eval_mean_loss']:.4f} at step {evals[0]['step']} -> "
                         f"{evals[-1]['eval_mean_loss']:.4f} at step {evals[-1]['step']}.")
            lines.append("")
    lines += ["## Reproduce", "", "```", command or f"lopt report {checkpoint} --out {out_dir}", "```", "",
              f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} with Python "
              f"{platform.python_version()}, jax {jax.__version__}, on {platform.machine()} "
              f"({jax.devices()[0].platform}).", ""]
    text = "\n".join(lines)
    atomic_write_bytes(os.path.join(out_dir, "report.md"), lambda f: f.write(text.encode()))
    data = json.dumps({"summary": summary, "rows": rows, "num_steps": num_steps}, indent=2).encode()
    atomic_write_bytes(os.path.join(out_dir, "report.json"), lambda f: f.write(data))
    return {"summary": summary, "rows": rows, "path": os.path.join(out_dir, "report.md")}


__all__ = ["write_report", "compare_on_family", "summarize", "held_out_cfgs"]
