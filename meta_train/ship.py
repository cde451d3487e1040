"""Copy a finished meta-training run into ``checkpoints/NAME/`` with a model card.

    python -m meta_train.ship runs/ship/mlp --name mlp --config default [--report checkpoints/report]

Copies ``optimizer.npz`` (meta-parameters only, never the training state), ``config.json``,
``meta_training.png`` and a thinned ``metrics.jsonl``, and writes ``MODEL_CARD.md``: architecture, meta-training distribution,
outer steps, wall time, hardware, the command that reproduces the run and, when ``--report``
names a report that evaluated this optimizer, its rows of that report.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil

import jax

import learned_opt
from learned_opt.base import config_to_dict
from learned_opt.files import atomic_write_text, read_jsonl, write_jsonl
from meta_train.config import NAMED_CONFIGS, TrainConfig


def wall_time_s(records: list[dict]) -> float:
    """Total training time from metrics.jsonl: ``time_s`` restarts at 0 on every resume, so
    sum the last value of each segment."""
    total, last = 0.0, 0.0
    for r in records:
        t = r.get("time_s")
        if t is None:
            continue
        if t < last:
            total += last
        last = t
    return total + last


def reproduce_command(cfg: dict, config_name: str, out: str) -> str:
    """``lopt train --config NAME --set k=v ...`` giving ``cfg`` (fields that differ from the
    named config; description excluded)."""
    base = json.loads(NAMED_CONFIGS[config_name].to_json())    # tuples as JSON lists, like cfg
    def text(v):
        return v if isinstance(v, str) and v.isidentifier() else json.dumps(v, separators=(",", ":"))
    sets = [f"--set {shlex.quote(f'{k}={text(v)}')}" for k, v in sorted(cfg.items())
            if k != "description" and base.get(k) != v]
    return " ".join(["lopt train --config", config_name, "--out", out, *sets])


def _report_rows(report_dir: str, label: str) -> list[str]:
    path = os.path.join(report_dir, "report.json")
    if not os.path.exists(path):
        return []
    rep = json.load(open(path))
    lines = ["| suite | optimizer | speedup over tuned Adam: median [q25, q75] | tasks faster | "
             "final loss / tuned Adam: median (worst) | guard fallback rate |", "|---|---|---|---|---|---|"]
    found = False
    for suite, rows in rep["summary"].items():
        for r in rows:
            if r["optimizer"] in (label, label + " +guard"):
                found = True
                a = r["speedup"]
                fb = "-" if r["fallback_rate"] is None else f"{100 * r['fallback_rate']:.0f}%"
                lines.append(f"| `{suite}` | {r['optimizer']} | {'≥' if a['median_is_bound'] else ''}"
                             f"{a['median']:.2f} [{a['q25']:.2f}, {a['q75']:.2f}] | "
                             f"{round(a['frac_faster'] * a['num_tasks'])}/{a['num_tasks']} | "
                             f"{r['median_ratio']:.3f} ({r['worst_ratio']:.3f}) | {fb} |")
    return lines if found else []


BENCH_HEADING = "## Benchmark"


def bench_rows(bench_dir: str, label: str) -> list[str]:
    """The model card's rows of ``lopt bench``'s leaderboard (``bench_dir/bench.json``): the
    optimizer unguarded and behind each guard, with its rank, IQM speedup over tuned Adam and
    fraction of tasks faster (95% intervals) over all suites, and the worst task's final loss."""
    path = os.path.join(bench_dir, "bench.json")
    if not os.path.exists(path):
        return []
    data = json.load(open(path))
    board = data["leaderboard"]
    lines = ["| optimizer | rank (of %d) | IQM speedup over tuned Adam, all suites [95%% CI] | tasks "
             "faster [95%% CI] | worst task's final loss / tuned Adam's |" % len(board),
             "|---|---|---|---|---|"]
    found = False
    for k, r in enumerate(board):
        if r["optimizer"] in (label, label + " +guard", label + " +traj-guard"):
            found = True
            i, f = r["overall"]["iqm"], r["overall"]["frac_faster"]
            worst = r["worst_final_ratio"]
            lines.append(f"| {r['optimizer']} | {k + 1} | {i['value']:.2f} [{i['low']:.2f}, {i['high']:.2f}] "
                         f"| {100 * f['value']:.0f}% [{100 * f['low']:.0f}, {100 * f['high']:.0f}] | "
                         + ("diverged" if worst is None or worst == float("inf") else f"{worst:.3f}") + " |")
    return lines if found else []


def bench_section(bench_dir: str, label: str, dest: str) -> list[str]:
    """The card's benchmark section (empty when the leaderboard does not list ``label``)."""
    rows = bench_rows(bench_dir, label)
    if not rows:
        return []
    rel = os.path.relpath(os.path.join(bench_dir, "leaderboard.md"), dest)
    try:
        settings = json.load(open(os.path.join(bench_dir, "bench.json")))["settings"]
    except (OSError, ValueError, KeyError):
        settings = {}
    guards, held_out = settings.get("guards", []), bool(settings.get("held_out"))
    how = ("unguarded and behind " + " and ".join(f"the {g} guard" for g in guards) if guards
           else "unguarded (`--no-guard`)")
    where = "held-out tasks of the suites benched" if held_out else "the suites benched"
    return [BENCH_HEADING, "", f"From the [{'held-out ' if held_out else ''}leaderboard]({rel}) "
            f"(`lopt bench{' --held-out' if held_out else ''}`: {how}, against tuned Adam on {where}; "
            "its command and settings, per-suite intervals and cost per step there):", ""] + rows + [""]


def update_card_bench(name: str, bench_dir: str, root: str = "checkpoints") -> str:
    """Put (or replace) the benchmark section of ``root/name/MODEL_CARD.md``, before its
    meta-training plot; returns the card's path."""
    dest = os.path.join(root, name)
    path = os.path.join(dest, "MODEL_CARD.md")
    text = open(path).read()
    label = learned_opt.load(os.path.join(dest, "optimizer.npz"))[0].architecture
    section = bench_section(bench_dir, label, dest)
    if BENCH_HEADING in text:                      # drop the old section up to the next heading/image
        head, rest = text.split(BENCH_HEADING, 1)
        tail = rest[min([i for i in (rest.find("\n## "), rest.find("\n![")) if i >= 0] or [len(rest)]) + 1:]
        text = head + tail
    marker = "![meta-training]"
    head, sep, tail = text.partition(marker)
    text = head + "\n".join(section) + ("\n" if section else "") + sep + tail
    atomic_write_text(path, text)
    return path


def ship(run_dir: str, name: str, config_name: str, root: str = "checkpoints",
         report_dir: str | None = None, label: str | None = None, notes: str = "",
         bench_dir: str | None = None) -> str:
    """Write ``root/name/`` from ``run_dir``; returns the model card's path."""
    lopt, theta, meta = learned_opt.load(os.path.join(run_dir, "optimizer.npz"))
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    tc = TrainConfig.from_dict(cfg)                 # a valid config, or a clear error
    records = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    evals = [r for r in records if "eval_mean_loss" in r]
    dest = os.path.join(root, name)
    os.makedirs(dest, exist_ok=True)
    for f in ("optimizer.npz", "config.json", "meta_training.png"):
        shutil.copyfile(os.path.join(run_dir, f), os.path.join(dest, f))
    # A thinned log (every evaluation, the training metrics every 50 steps) for the report.
    kept = [r for r in records if "eval_mean_loss" in r or r.get("step", 0) % 50 == 0]
    write_jsonl(os.path.join(dest, "metrics.jsonl"), kept)
    n_params = sum(x.size for x in jax.tree.leaves(theta))
    entries = tc.family_entries()

    def family_text(e):
        extra = [json.dumps(e.kwargs)] if e.kwargs else []
        extra += [f"augmented {json.dumps(e.augment)}"] if e.augment else []
        return f"`{e.family}`" + (f" {' '.join(extra)}" if extra else "")

    if len(entries) == 1:
        fam = f"task family {family_text(entries[0])}"
    else:
        total = sum(e.weight for e in entries)
        fam = f"{len(entries)} task families (weight, particles): " + "; ".join(
            f"{family_text(e)} ({e.weight / total:.2f}, {2 * (e.num_pairs or tc.num_pairs)})"
            for e in entries)
    particles = sum(2 * (e.num_pairs or tc.num_pairs) for e in entries)
    steps = int(meta.get("outer_steps", 0) or 0)
    inner = steps * particles * tc.truncation_length
    label = label or lopt.architecture
    lines = [
        f"# `{name}`: {NAMED_CONFIGS[config_name].description.split(', PES')[0]}", "",
        "```python", "import learned_opt",
        (f'tx = learned_opt.load("{name}").as_optax(num_steps=T)    # T: your run\'s length (None if unknown)'
         if lopt.architecture == "norm_mlp" else
         f'tx = learned_opt.load("{name}").as_optax()    # an optax GradientTransformationExtraArgs'),
        "# in the training loop: updates, state = tx.update(grads, state, params, value=loss)", "```", "",
        "| | |", "|---|---|",
        f"| architecture | `{lopt.architecture}` ({n_params} meta-parameters), config "
        f"`{json.dumps(config_to_dict(lopt.config), default=str)}` |",
        f"| meta-training distribution | {fam}: {cfg['min_episode_length']}-"
        f"{cfg['max_episode_length']}-step training runs (log-uniform), truncations of "
        f"{cfg['truncation_length']} steps |",
        f"| meta-training | {cfg['estimator'].upper()}, {particles} particles, sigma "
        f"{cfg['sigma']}, meta-optimizer {cfg['meta_optimizer']} lr {cfg['meta_lr']}"
        + (f" -> {cfg['meta_lr_final']} (cosine)" if cfg.get("meta_lr_final") is not None else "")
        + f", meta-loss: normalised training {'log-loss' if cfg.get('meta_loss') == 'log' else 'loss'}"
        + (" at the end of each episode only (meta_objective final)"
           if cfg.get("meta_objective") == "final" else "") + " |",
        *([f"| initialised from | `{cfg['init_from']}` (fine-tuned: the compute below is this run's "
           "only, not that optimizer's own meta-training) |"] if cfg.get("init_from") else []),
        f"| outer steps | {meta.get('outer_steps', '?')} ({inner:,} inner training steps in all) |",
        f"| wall time | {wall_time_s(records) / 60:.1f} min |",
        f"| hardware | {platform.machine()}, {os.cpu_count()} CPU cores (no accelerator) |",
        "| held-out evaluation during meta-training | "
        + (f"{evals[0]['eval_mean_loss']:.4f} (step 0) -> {evals[-1]['eval_mean_loss']:.4f} "
           f"(step {evals[-1]['step']}), mean normalised loss of {cfg['eval_tasks']} tasks x "
           f"{cfg['eval_steps']} steps |" if evals else "- |"),
        "", "Reproduce:", "", "```", reproduce_command(cfg, config_name, f"runs/ship/{name}"), "```", ""]
    if notes:
        lines += [notes, ""]
    rows = _report_rows(report_dir, label) if report_dir else []
    if rows:
        rel = os.path.relpath(os.path.join(report_dir, "report.md"), dest)
        lines += ["## Evaluation", "", f"From the [report]({rel}) (all shipped optimizers, tuned "
                  "baselines, curves, cost per step, the command and versions):", ""] + rows + [""]
    if bench_dir:
        lines += bench_section(bench_dir, label, dest)
    lines += ["![meta-training](meta_training.png)", ""]
    path = os.path.join(dest, "MODEL_CARD.md")
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--name", required=True, help="shipped name (learned_opt.load(NAME))")
    ap.add_argument("--config", required=True, help="the named config the run started from")
    ap.add_argument("--root", default="checkpoints")
    ap.add_argument("--report", help="a report directory that evaluated this optimizer")
    ap.add_argument("--label", help="the optimizer's label in that report (default: its architecture)")
    ap.add_argument("--notes", default="", help="a paragraph added to the card")
    ap.add_argument("--bench", help="a `lopt bench` output directory that ranked this optimizer")
    a = ap.parse_args(argv)
    print(ship(a.run_dir, a.name, a.config, a.root, a.report, a.label, a.notes, a.bench))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
