"""`lopt report`: a Markdown report with PNG plots comparing one or more learned optimizers,
their loss-guarded versions and Adam (lr=1e-3 and tuned per task) on held-out suites:
unseen tasks of the meta-training family, a horizon ``long_factor`` times longer, and tasks
outside the family (see ``meta_train.compare``)."""
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
from meta_train import compare as cmp
from meta_train.evaluate import ADAM_LR_GRID, final_loss
from meta_train.plots import plot_suite
from meta_train.run import read_metrics
from meta_train.state_io import atomic_write_bytes

HELD_OUT_SEED = cmp.HELD_OUT_SEED


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


def _suite_section(res: dict, rows: list[dict], png: str) -> list[str]:
    s = res["suite"]
    lines = [f"## Suite `{s.name}`", "", s.description + ".", "",
             "| optimizer | final loss / tuned Adam: median [q25, q75] | worst task | tasks better "
             "than tuned Adam | test loss / tuned Adam (median) | diverged | guard fallback rate |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {_fmt(r['median_ratio'])} [{_fmt(r['q25_ratio'])}, "
            f"{_fmt(r['q75_ratio'])}] | {_fmt(r['worst_ratio'])} | {r['beats_tuned_adam']}/{r['num_tasks']} "
            f"| {_fmt(r['median_test_ratio'])} | {r['diverged']} | {_pct(r['fallback_rate'])} |")
    lines += ["", f"![{s.name}]({png})", "",
              "<details><summary>per task: final training loss (mean of the last 5% of steps)</summary>",
              "", "| task | tuned Adam lr | " + " | ".join(r["optimizer"] for r in rows) + " |",
              "|---|---|" + "---|" * len(rows)]
    for i, name in enumerate(res["task_labels"]):
        lines.append(f"| {name} | {res['tuned_lr'][i]:g} | "
                     + " | ".join(_fmt(r["final_losses"][i], 4) for r in rows) + " |")
    lines += ["", "</details>", ""]
    return lines


def _meta_training_section(paths, entries, metas, out_dir) -> list[str]:
    lines = ["## The learned optimizers", "",
             "| optimizer | checkpoint | meta-training family | outer steps | held-out eval during "
             "meta-training (mean normalised loss) |", "|---|---|---|---|---|"]
    images = []
    for p, e, meta in zip(paths, entries, metas):
        tc = meta.get("train_config") or {}
        run_dir = os.path.dirname(os.path.abspath(p))
        evals = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "eval_mean_loss" in r]
        ev_txt = (f"{evals[0]['eval_mean_loss']:.4f} (step {evals[0]['step']}) -> "
                  f"{evals[-1]['eval_mean_loss']:.4f} (step {evals[-1]['step']})") if evals else "-"
        lines.append(f"| {e.label} | `{p}` | `{tc.get('family', '?')}` | {meta.get('outer_steps', '?')} "
                     f"| {ev_txt} |")
        png = os.path.join(run_dir, "meta_training.png")
        if os.path.exists(png):
            images.append(f"![meta-training of {e.label}]({os.path.relpath(png, out_dir)})")
    return lines + [""] + images + [""]


def write_report(checkpoints, out_dir: str, num_tasks: int = 8, num_steps: int | None = None,
                 long_factor: int = 5, ood_tasks: int = 4, guard: bool = True,
                 command: str | None = None, progress=None, suite_names=None) -> dict:
    """Evaluate ``checkpoints`` (one path or a list) on the held-out suites of the first
    checkpoint's meta-training family, or on the named suites ``suite_names`` (see
    ``tasks.suites``); writes report.md, report.json and one PNG per suite."""
    paths = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    entries, metas = cmp.load_entries(paths)
    tc = metas[0].get("train_config") or {}
    if "family" not in tc:
        raise tasks.TaskError(f"{paths[0]} does not record its meta-training family; "
                              "it cannot be evaluated on held-out tasks of its family")
    others = {m.get("train_config", {}).get("family") for m in metas[1:]} - {tc["family"]}
    if suite_names:
        from tasks.suites import get_suite
        suites = [cmp.suite_from_spec(get_suite(n)) for n in suite_names]
    elif others:
        raise tasks.TaskError(f"checkpoints were meta-trained on different families "
                              f"({tc['family']!r} and {sorted(map(str, others))}); report them separately "
                              "or on named suites (--suite)")
    else:
        suites = cmp.suites_for(tc, num_tasks, num_steps, long_factor, ood_tasks)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    results, summary = [], {}
    for suite in suites:
        res = cmp.run_suite(suite, entries, guard=guard, progress=progress)
        rows = cmp.summarize_suite(res)
        png = f"suite_{suite.name}.png"
        plot_suite(res["curves"], final_loss(res["curves"][cmp.ADAM_TUNED]), os.path.join(out_dir, png),
                   suite.description[:90], window=max(1, suite.num_steps // 50))
        results.append((res, rows, png))
        summary[suite.name] = rows
    wall = time.time() - t0

    names = ", ".join(f"`{e.label}`" for e in entries)
    lines = [f"# Learned optimizer report: {names} on `{tc['family']}`", "",
             "Every optimizer trains the same tasks from the same initialisations on the same batches. "
             "**Final loss** is the mean training loss over the last 5% of steps; the tables give it "
             "divided by tuned Adam's on the same task (below 1 = better than tuned Adam). Adam is tuned "
             "per task over learning rates "
             f"{list(ADAM_LR_GRID)} on the final training loss. `+guard` is the loss-guarded "
             "version (LGL2O): each step both the learned optimizer and Adam at the task's tuned learning "
             "rate propose parameters, their losses are compared on a fresh guard batch and the lower is "
             "kept; the fallback rate is the fraction of steps that took Adam's proposal. The guard costs "
             "two extra loss evaluations per step.", ""]
    for res, rows, png in results:
        lines += _suite_section(res, rows, png)
    lines += _meta_training_section(paths, entries, metas, out_dir)
    lines += ["## Reproduce", "", "```", command or ("lopt report " + " ".join(paths) + f" --out {out_dir}"),
              "```", "",
              f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} in {wall:.0f} s with "
              f"Python {platform.python_version()}, {_versions()}, on {platform.machine()} "
              f"({jax.devices()[0].platform}, {jax.devices()[0].device_kind}).", ""]
    text = "\n".join(lines)
    atomic_write_bytes(os.path.join(out_dir, "report.md"), lambda f: f.write(text.encode()))
    data = json.dumps({"checkpoints": paths, "optimizers": [e.label for e in entries],
                       "suites": {s.name: {"description": s.description, "num_tasks": s.num_tasks,
                                           "num_steps": s.num_steps} for s in suites},
                       "summary": summary}, indent=2).encode()
    atomic_write_bytes(os.path.join(out_dir, "report.json"), lambda f: f.write(data))
    return {"summary": summary, "path": os.path.join(out_dir, "report.md"),
            "optimizers": [e.label for e in entries], "wall_s": wall}


def summary_lines(rep: dict) -> list[str]:
    """A few lines for the terminal: each learned optimizer against tuned Adam, per suite."""
    out = []
    for suite, rows in rep["summary"].items():
        parts = [f"{r['optimizer']} {r['median_ratio']:.3f} ({r['beats_tuned_adam']}/{r['num_tasks']})"
                 for r in rows if r["optimizer"] != cmp.ADAM_TUNED]
        out.append(f"  {suite}: " + "; ".join(parts))
    return out


__all__ = ["write_report", "summary_lines", "HELD_OUT_SEED"]
