"""Run several learned optimizers, their loss-guarded versions and Adam (default and tuned per
task) on the same held-out evaluation suites.

Suites built from a checkpoint's meta-training config (``suites_for``):

- ``in_distribution``: unseen tasks of the meta-training family (configs and seeds from a
  stream not used in meta-training), at the meta-training horizon H;
- ``long_horizon``: the same tasks for ``long_factor * H`` steps;
- ``ood_dataset`` / ``ood_architecture``: tasks outside the family (another dataset; MLPs of
  another depth, width and activations), at horizon H.

Every optimizer sees the same task configs, initialisations and batches. Adam is tuned per
task over ``evaluate.ADAM_LR_GRID`` on the final training loss; the guarded learned optimizers
fall back to Adam at that tuned learning rate (the LGL2O setting: a well-tuned fallback).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_opt
import tasks
from learned_opt.loss_guard import guarded
from meta_train import evaluate as ev

HELD_OUT_SEED = 20_240_917  # disjoint from meta-training (config seed) and periodic eval streams
ADAM_DEFAULT = "Adam lr=1e-3"
ADAM_TUNED = "Adam tuned"

# Out-of-distribution families per meta-training family: (suite, description, family, kwargs).
_MLP_ARCH_SHIFT = {"hidden_sizes": [128, 64, 32], "activations": ["sigmoid", "elu", "softplus"]}
OOD_FAMILIES = {
    "mnist1d_mlp": [("ood_dataset", "another dataset: sklearn digits (8x8)", "digits_mlp", {}),
                    ("ood_architecture", "another architecture: MLP (128, 64, 32) with sigmoid/elu/"
                     "softplus on MNIST-1D", "mnist1d_mlp", _MLP_ARCH_SHIFT)],
    "digits_mlp": [("ood_dataset", "another dataset: MNIST-1D", "mnist1d_mlp", {}),
                   ("ood_architecture", "another architecture: MLP (128, 64, 32) with sigmoid/elu/"
                    "softplus on digits", "digits_mlp", _MLP_ARCH_SHIFT)],
    "quadratic": [("ood_dataset", "other quadratics: 30-d, condition number up to 1000",
                   "quadratic", {"dim": 30, "max_cond": 1000.0})],
}


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    family: Any
    num_tasks: int
    num_steps: int
    seed: int = HELD_OUT_SEED


@dataclasses.dataclass
class Entry:
    """A learned optimizer to evaluate."""
    label: str
    lopt: Any
    theta: Any


def suites_for(train_config: dict, num_tasks: int = 8, num_steps: int | None = None,
               long_factor: int = 5, ood_tasks: int = 4) -> list[Suite]:
    fam_name = train_config["family"]
    family = tasks.get_family(fam_name, **train_config.get("family_kwargs", {}))
    longest = int(train_config.get("max_episode_length", 400))
    H = int(num_steps or longest)
    episodes = (f"meta-training episodes were {train_config.get('min_episode_length', '?')}-{longest} "
                f"steps")
    out = [Suite("in_distribution", f"{num_tasks} unseen tasks of the meta-training family "
                 f"`{fam_name}`, {H} steps ({episodes})", family, num_tasks, H)]
    if long_factor > 1:
        out.append(Suite("long_horizon", f"the same tasks for {long_factor * H} steps "
                         f"({long_factor * H / longest:.1f}x the longest meta-training episode)",
                         family, num_tasks, long_factor * H))
    for name, desc, other, kwargs in OOD_FAMILIES.get(fam_name, []):
        if ood_tasks > 0:
            out.append(Suite(name, f"{ood_tasks} tasks of {desc}, {H} steps",
                             tasks.get_family(other, **kwargs), ood_tasks, H))
    return out


def suite_from_spec(spec) -> Suite:
    """A named suite (tasks.suites.SuiteSpec) as a Suite."""
    return Suite(spec.name, f"{spec.kind}: {spec.description}", spec.get_family(), spec.num_tasks,
                 spec.num_steps, spec.seed)


def held_out_cfgs(family, num_tasks: int, seed: int = HELD_OUT_SEED):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_tasks)
    return jax.vmap(family.sample)(keys[:num_tasks]), keys[num_tasks:]


def task_label(family, cfgs, i) -> str:
    leaves = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: np.asarray(x[i]), cfgs))[0]
    parts = []
    for path, v in leaves:
        name = jax.tree_util.keystr(path).strip("[]'\"")
        if name == "activation" and hasattr(family, "activations"):
            parts.append(f"{family.activations[int(v)]}")
        elif v.size == 1:
            parts.append(f"{name}={v.item():.3g}" if v.dtype.kind == "f" else f"{name}={v.item()}")
    return ", ".join(parts) if parts else f"task {i}"


def _run(family, cfgs, keys, make_tx, theta, lrs, num_steps, guard=False):
    """vmap over tasks of ``run_task(family.task(cfg), make_tx(theta, lr), key)``."""
    def one(cfg, key, lr, theta):
        return ev.run_task(family.task(cfg), make_tx(theta, lr), key, num_steps, guard=guard)
    losses, test, fb = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))(cfgs, keys, lrs, theta)
    return np.asarray(losses), np.asarray(test), np.asarray(fb)


def run_suite(suite: Suite, entries: list[Entry], guard: bool = True, progress=None) -> dict:
    """Curves of every optimizer on the suite. Returns {"labels", "curves": {label: (tasks, steps)},
    "test": {label: (tasks,)}, "fallback": {label: (tasks,)}, "tuned_lr": (tasks,), ...}."""
    fam, n, T = suite.family, suite.num_tasks, suite.num_steps
    cfgs, keys = held_out_cfgs(fam, n, suite.seed)
    grid = np.asarray(ev.ADAM_LR_GRID, np.float32)

    def adam_grid(cfg, key, lr):
        return ev.run_task(fam.task(cfg), optax.adam(lr), key, T)
    over_tasks = jax.vmap(adam_grid, in_axes=(0, 0, None))
    g_losses, g_test, _ = jax.jit(jax.vmap(over_tasks, in_axes=(None, None, 0)))(cfgs, keys, grid)
    g_losses, g_test = np.asarray(g_losses), np.asarray(g_test)     # (lrs, tasks, ...)
    best = np.argmin(ev.final_loss(g_losses), axis=0)
    default_i = int(np.argmin(np.abs(grid - ev.DEFAULT_ADAM_LR)))
    tuned_lr = grid[best]
    curves = {ADAM_DEFAULT: g_losses[default_i],
              ADAM_TUNED: np.stack([g_losses[best[i], i] for i in range(n)])}
    test = {ADAM_DEFAULT: g_test[default_i], ADAM_TUNED: np.array([g_test[best[i], i] for i in range(n)])}
    fallback: dict[str, np.ndarray] = {}
    for e in entries:
        if progress:
            progress(f"{suite.name}: {e.label}")
        losses, tl, _ = _run(fam, cfgs, keys, lambda th, lr, e=e: e.lopt.as_optax(th), e.theta,
                             jnp.asarray(tuned_lr), T)
        curves[e.label], test[e.label] = losses, tl
        if guard:
            label = e.label + " +guard"
            losses, tl, fb = _run(fam, cfgs, keys,
                                  lambda th, lr, e=e: guarded(e.lopt, th, optax.adam(lr)),
                                  e.theta, jnp.asarray(tuned_lr), T, guard=True)
            curves[label], test[label], fallback[label] = losses, tl, fb
    return {"suite": suite, "labels": list(curves), "curves": curves, "test": test,
            "fallback": fallback, "tuned_lr": tuned_lr,
            "task_labels": [task_label(fam, cfgs, i) for i in range(n)]}


def summarize_suite(res: dict) -> list[dict]:
    """Per optimizer: final training loss relative to tuned Adam on each task, aggregated."""
    ref = ev.final_loss(res["curves"][ADAM_TUNED])
    ref_test = res["test"][ADAM_TUNED]
    rows = []
    for label in res["labels"]:
        fin = ev.final_loss(res["curves"][label])
        ratio = fin / ref
        test_ratio = np.where(np.isfinite(res["test"][label]), res["test"][label] / ref_test, np.inf)
        fb = res["fallback"].get(label)
        rows.append({
            "optimizer": label,
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
        })
    return rows


def entry_label(lopt, path: str, taken: set) -> str:
    cfg = getattr(lopt, "config", None)
    label = lopt.architecture + (" +DMD" if getattr(cfg, "dmd_window", 0) else "")
    if label in taken:
        label = f"{label} ({path})"
    taken.add(label)
    return label


def load_entries(paths: list[str]) -> tuple[list[Entry], list[dict]]:
    entries, metas, taken = [], [], set()
    for p in paths:
        lopt, theta, meta = learned_opt.load(p)
        entries.append(Entry(entry_label(lopt, p, taken), lopt, theta))
        metas.append(meta or {})
    return entries, metas


__all__ = ["Suite", "Entry", "suites_for", "suite_from_spec", "run_suite", "summarize_suite", "load_entries",
           "held_out_cfgs", "task_label", "OOD_FAMILIES", "ADAM_DEFAULT", "ADAM_TUNED"]
