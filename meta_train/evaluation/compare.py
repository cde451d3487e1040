"""Run several learned optimizers, their loss-guarded versions and Adam (default and tuned per
task) on the same held-out evaluation suites.

Suites built from a checkpoint's meta-training config (``suites_for``):

- ``in_distribution``: unseen tasks of the meta-training family (configs and seeds from a
  stream not used in meta-training), at the meta-training horizon H;
- ``long_horizon``: the same tasks for ``long_factor * H`` steps;
- ``ood_dataset`` / ``ood_architecture``: tasks outside the family (another dataset; MLPs of
  another depth, width and activations), at horizon H.

Every optimizer sees the same task configs, initialisations and batches (several seeds per
task). Adam and the baselines are tuned per task over the log grids
``learned_opt.baselines.LR_GRIDS`` on the seed-averaged final training loss; the guarded
learned optimizers fall back to Adam at its tuned learning rate (the LGL2O setting: a
well-tuned fallback). Adam's whole grid, run 4x longer, is the reference of the speedup
metric (``meta_train.speedup``).
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
from learned_opt.baselines import LR_GRIDS, make_baseline
from learned_opt.loss_guard import guarded
from meta_train import evaluate as ev
from meta_train import speedup as sp

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


def seed_keys(keys, num_seeds: int):
    """(tasks,) keys -> (tasks, seeds) keys: seed j of task i initialises and batches differently."""
    return jax.vmap(lambda k: jax.random.split(k, num_seeds))(keys)


def _curves(fam, cfgs, keys, make_tx, per_task, shared, num_steps, guard=False):
    """``run_task(fam.task(cfg_i), make_tx(per_task_i, shared), key_ij)`` for every task i and
    seed j, vmapped. ``per_task`` has a leading task axis (e.g. each task's tuned learning rate),
    ``shared`` does not (e.g. meta-parameters). Returns numpy (losses (tasks, seeds, steps),
    test losses (tasks, seeds), fallback rates (tasks, seeds))."""
    def one(cfg, key, p, sh):
        return ev.run_task(fam.task(cfg), make_tx(p, sh), key, num_steps, guard=guard)
    over_seeds = jax.vmap(one, in_axes=(None, 0, None, None))
    out = jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, 0, None)))(cfgs, keys, per_task, shared)
    return tuple(np.asarray(x) for x in out)


def _grid_curves(fam, cfgs, keys, make_tx, grid, num_steps):
    """Every learning rate of ``grid`` on every task and seed: (lrs, tasks, seeds, ...)."""
    def one(cfg, key, lr):
        return ev.run_task(fam.task(cfg), make_tx(lr), key, num_steps)
    f = jax.vmap(jax.vmap(one, in_axes=(None, 0, None)), in_axes=(0, 0, None))
    losses, test, _ = jax.jit(jax.vmap(f, in_axes=(None, None, 0)))(cfgs, keys, jnp.asarray(grid))
    return np.asarray(losses), np.asarray(test)


def _tune(grid_losses, grid, num_steps):
    """Per task, the grid index whose seed-averaged final training loss over the first
    ``num_steps`` steps is lowest."""
    fin = ev.final_loss(grid_losses[..., :num_steps]).mean(axis=-1)      # (lrs, tasks)
    fin = np.where(np.isfinite(fin), fin, np.inf)
    return np.argmin(fin, axis=0)


DEFAULT_BASELINES = ("adamw", "momentum", "rmsprop", "lion", "radam")


def run_suite(suite: Suite, entries: list[Entry], guard: bool = True, progress=None,
              num_seeds: int = 3, baselines=DEFAULT_BASELINES, adam_factor: int = 4) -> dict:
    """Every optimizer on every task of the suite with ``num_seeds`` seeds.

    Adam runs the grid ``LR_GRIDS["adam"]`` for ``adam_factor`` times the suite's horizon T: its
    first T steps give Adam tuned per task (and at lr=1e-3), all of it the reference curve of
    the speedup (``meta_train.speedup``). Each baseline is tuned per task over its own grid on the
    seed-averaged final training loss at T. Learned optimizers run as they are and, with
    ``guard``, loss-guarded with Adam at the task's tuned learning rate as the fallback.

    Returns {"suite", "labels", "curves": {label: (tasks, seeds, T)}, "test": {label: (tasks,
    seeds)}, "fallback": {label: (tasks, seeds)}, "tuned_lr": {label: (tasks,)}, "envelopes":
    (tasks, adam_factor*T), "task_labels"}."""
    fam, n, T = suite.family, suite.num_tasks, suite.num_steps
    cfgs, task_keys = held_out_cfgs(fam, n, suite.seed)
    keys = seed_keys(task_keys, num_seeds)
    say = progress or (lambda msg: None)
    curves, test, fallback, tuned = {}, {}, {}, {}
    window = speedup_window(T)

    say(f"{suite.name}: Adam over {len(LR_GRIDS['adam'])} learning rates x {adam_factor * T} steps")
    grid = np.asarray(LR_GRIDS["adam"], np.float32)
    g_losses, _ = _grid_curves(fam, cfgs, keys, optax.adam, grid, adam_factor * T)
    envelopes = np.stack([sp.reference_envelope(g_losses[:, i], window) for i in range(n)])
    best = _tune(g_losses, grid, T)
    default = np.full(n, ev.DEFAULT_ADAM_LR, np.float32)
    # T-step runs at the chosen rates: their curves equal the grid's first T steps (same keys),
    # but the test loss needs the parameters at step T.
    for label, lrs in ((ADAM_DEFAULT, default), (ADAM_TUNED, grid[best])):
        curves[label], test[label], _ = _curves(fam, cfgs, keys, lambda lr, _: optax.adam(lr),
                                                jnp.asarray(lrs), 0, T)
        tuned[label] = lrs
    for name in baselines:
        say(f"{suite.name}: {name} over {len(LR_GRIDS[name])} learning rates")
        b_grid = np.asarray(LR_GRIDS[name], np.float32)
        b_losses, b_test = _grid_curves(fam, cfgs, keys, lambda lr, name=name: make_baseline(name, lr),
                                        b_grid, T)
        b = _tune(b_losses, b_grid, T)
        label = f"{name} tuned"
        curves[label] = np.stack([b_losses[b[i], i] for i in range(n)])
        test[label] = np.stack([b_test[b[i], i] for i in range(n)])
        tuned[label] = b_grid[b]
    for e in entries:
        say(f"{suite.name}: {e.label}")
        curves[e.label], test[e.label], _ = _curves(
            fam, cfgs, keys, lambda _, th, e=e: e.lopt.as_optax(th), jnp.zeros(n), e.theta, T)
        if guard:
            label = e.label + " +guard"
            curves[label], test[label], fallback[label] = _curves(
                fam, cfgs, keys, lambda lr, th, e=e: guarded(e.lopt, th, optax.adam(lr)),
                jnp.asarray(grid[best]), e.theta, T, guard=True)
    return {"suite": suite, "labels": list(curves), "curves": curves, "test": test,
            "fallback": fallback, "tuned_lr": tuned, "envelopes": envelopes, "window": window,
            "adam_factor": adam_factor, "num_seeds": num_seeds,
            "task_labels": [task_label(fam, cfgs, i) for i in range(n)]}


def speedup_window(num_steps: int) -> int:
    """Smoothing window of the speedup metric: 2% of the horizon."""
    return max(1, num_steps // 50)


def speedups(res: dict, label: str, steps=None) -> list[list[sp.Speedup]]:
    """Per task, the speedup of ``label`` over tuned Adam at ``steps`` (default: the last)."""
    return [sp.speedup_curve(res["curves"][label][i], res["envelopes"][i], res["window"], steps)
            for i in range(len(res["envelopes"]))]


def summarize_suite(res: dict) -> list[dict]:
    """Per optimizer: speedup over tuned Adam at the last step, and final training loss (mean
    over seeds) relative to tuned Adam's, on each task and aggregated."""
    mean = {k: ev.final_loss(v).mean(axis=-1) for k, v in res["curves"].items()}
    ref = mean[ADAM_TUNED]
    ref_test = res["test"][ADAM_TUNED].mean(axis=-1)
    rows = []
    for label in res["labels"]:
        fin = np.where(np.isfinite(mean[label]), mean[label], np.inf)
        ratio = fin / ref
        t = res["test"][label].mean(axis=-1)
        test_ratio = np.where(np.isfinite(t), t / ref_test, np.inf)
        fb = res["fallback"].get(label)
        per_task = [s[0] for s in speedups(res, label)]
        rows.append({
            "optimizer": label,
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
           "held_out_cfgs", "seed_keys", "speedups", "DEFAULT_BASELINES", "task_label", "OOD_FAMILIES", "ADAM_DEFAULT", "ADAM_TUNED"]
