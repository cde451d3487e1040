"""Run several learned optimizers, their loss-guarded versions and Adam (default and tuned per
task) on the same held-out evaluation suites.

The suites (their tasks, seeds and horizons) are defined in ``tasks.suites``: named suites, or
the ones derived from a checkpoint's meta-training config (``tasks.suites.suites_for``).

Every optimizer sees the same task configs, initialisations and batches (several seeds per
task). Adam and the baselines are tuned per task over the log grids
``learned_opt.baselines.LR_GRIDS`` on the seed-averaged final training loss; the guarded
learned optimizers fall back to Adam at its tuned learning rate (the LGL2O setting: a
well-tuned fallback), behind either guard: the per-step loss guard (``+guard``,
``learned_opt.loss_guard``) and the trajectory guard (``+traj-guard``,
``learned_opt.trajectory_guard``: tuned Adam's own run alongside, checked every
``check_every`` steps and at the last). Adam's whole grid, run 4x longer, is the reference of the speedup
metric (``meta_train.evaluation.speedup``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_opt
from learned_opt.baselines import LR_GRIDS, make_baseline
from learned_opt.loss_guard import guarded
from learned_opt.trajectory_guard import DEFAULT_CHECK_EVERY, trajectory_guarded
from meta_train.evaluation import curves as ev
from meta_train.evaluation import references as refs
from meta_train.evaluation import speedup as sp
from tasks.suites import Suite

ADAM_DEFAULT = "Adam lr=1e-3"
ADAM_TUNED = "Adam tuned"
GUARDS = ("step", "trajectory")
GUARD_SUFFIX = {"step": " +guard", "trajectory": " +traj-guard"}


def guard_kinds(guard) -> tuple[str, ...]:
    """``True`` -> both guards, ``False``/``None``/``()`` -> none, a kind or kinds -> those."""
    if guard is True:
        return GUARDS
    if not guard:
        return ()
    kinds = (guard,) if isinstance(guard, str) else tuple(guard)
    bad = [k for k in kinds if k not in GUARDS]
    if bad:
        raise learned_opt.LearnedOptError(f"unknown guard(s) {bad}; choose from {', '.join(GUARDS)}")
    return kinds


def unguarded_label(label: str) -> str:
    """The learned optimizer's label without a guard suffix."""
    for suffix in GUARD_SUFFIX.values():
        label = label.removesuffix(suffix)
    return label


@dataclasses.dataclass
class Entry:
    """A learned optimizer to evaluate."""
    label: str
    lopt: Any
    theta: Any


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
    ``shared`` does not (e.g. meta-parameters). Returns ``curves.TaskCurves`` of numpy arrays
    (losses (tasks, seeds, steps), test losses, guard rates and final losses (tasks, seeds))."""
    def one(cfg, key, p, sh):
        return ev.run_task(fam.task(cfg), make_tx(p, sh), key, num_steps, guard=guard)
    over_seeds = jax.vmap(one, in_axes=(None, 0, None, None))
    out = jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, 0, None)))(cfgs, keys, per_task, shared)
    return ev.TaskCurves(*(np.asarray(x) for x in out))


GRID_MEMORY_BYTES: int | None = None   # budget for a grid population's working memory (None: grid_budget)
_DEFAULT_GRID_BUDGET = 4 * 2 ** 30       # where the device reports no memory limit (CPU)


def grid_budget() -> int:
    """The working memory a grid population may use at once: ``GRID_MEMORY_BYTES`` when set, else
    half the device's memory where it reports a limit (accelerators), else 4 GiB."""
    if GRID_MEMORY_BYTES is not None:
        return int(GRID_MEMORY_BYTES)
    try:
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:   # backends without memory stats
        limit = None
    return int(limit) // 2 if limit else _DEFAULT_GRID_BUDGET


def grid_chunk(compiled, grid_size: int, budget: int | None = None, compiled_rates: int | None = None) -> int:
    """How many of a grid's ``grid_size`` rates to run at once: all of them unless the compiled
    population's working memory (XLA's ``memory_analysis``; unknown: all), scaled from the
    ``compiled_rates`` it was compiled for (default all) to the whole grid, exceeds ``budget``
    (default :func:`grid_budget`), else the share that fits, at least 1. (Runs that evaluate the
    whole training set at their end, such as the text RNN's, need ~0.6 GB each: 11 rates x 4 tasks
    x 2 seeds at once would need 56 GB.)"""
    budget = grid_budget() if budget is None else budget
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:   # backends without a memory analysis
        return grid_size
    temp = temp * grid_size // (compiled_rates or grid_size)
    if temp <= budget:
        return grid_size
    return max(1, int(grid_size * budget // temp))


def _compile(fn, *args):
    """``fn`` jitted, lowered and compiled for ``args`` (one place, so tests can stand in for it)."""
    return jax.jit(fn).lower(*args).compile()


def _out_of_memory(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def _grid_curves(fam, cfgs, keys, make_tx, grid, num_steps, final: bool = False):
    """Every learning rate of ``grid`` on every task and seed, one vmapped, jitted population:
    ``curves.TaskCurves`` with leading axes (lrs, tasks, seeds). With ``final=False`` only the
    curves leave the jitted function (XLA then drops the end-of-run evaluations; the other fields
    are None): for runs whose end is not reported, such as Adam's longer reference runs. A
    population too large at once (:func:`grid_chunk`; or whose compilation runs out of device
    memory, as XLA:TPU's does) runs its rates in chunks, in turn, with the same results."""
    def one(cfg, key, lr):
        run = ev.run_task(fam.task(cfg), make_tx(lr), key, num_steps)
        return run if final else run.losses
    f = jax.vmap(jax.vmap(one, in_axes=(None, 0, None)), in_axes=(0, 0, None))
    over_grid = jax.vmap(f, in_axes=(None, None, 0))
    grid = jnp.asarray(grid)
    try:
        compiled = _compile(over_grid, cfgs, keys, grid)
        chunk = grid_chunk(compiled, len(grid))
    except Exception as e:   # the whole population does not even compile: size a chunk from one rate
        if len(grid) == 1 or not _out_of_memory(e):
            raise
        one_rate = _compile(over_grid, cfgs, keys, grid[:1])
        chunk = min(grid_chunk(one_rate, len(grid), compiled_rates=1), max(1, len(grid) // 2))
    if chunk < len(grid):   # the grid's rates in chunks of ``chunk``, in turn
        compiled = _compile(lambda c, k, g: jax.lax.map(lambda lr: f(c, k, lr), g, batch_size=chunk),
                            cfgs, keys, grid)
    out = compiled(cfgs, keys, grid)
    if not final:
        return ev.TaskCurves(np.asarray(out), None, None, None)
    return ev.TaskCurves(*(np.asarray(x) for x in out))


def _pick(runs, choice):
    """Per task i the grid entry ``choice[i]`` of grid runs (leading axes (lrs, tasks, ...))."""
    idx = np.arange(len(choice))
    return ev.TaskCurves(*(None if x is None else x[choice, idx] for x in runs))


def _tune(grid_losses, grid, num_steps):
    """Per task, the grid index whose seed-averaged final training loss over the first
    ``num_steps`` steps is lowest."""
    fin = ev.final_loss(grid_losses[..., :num_steps]).mean(axis=-1)      # (lrs, tasks)
    fin = np.where(np.isfinite(fin), fin, np.inf)
    return np.argmin(fin, axis=0)


def adam_reference(fam, cfgs, keys, grid, num_steps: int, adam_factor: int) -> refs.AdamReference:
    """Adam over ``grid`` for ``adam_factor * num_steps`` steps on every task and seed: the
    speedup's reference envelopes, each task's tuned grid index (seed-averaged final training
    loss at ``num_steps``), and the ``num_steps``-step runs at lr 1e-3 and at the tuned rate."""
    n = len(keys)
    g_losses = _grid_curves(fam, cfgs, keys, optax.adam, grid, adam_factor * num_steps).losses
    window = speedup_window(num_steps)
    envelopes = np.stack([sp.reference_envelope(g_losses[:, i], window) for i in range(n)])
    best = _tune(g_losses, grid, num_steps)
    default = np.full(n, ev.DEFAULT_ADAM_LR, np.float32)
    # T-step runs at the chosen rates, default and tuned in one call: their curves equal the
    # grid's first T steps (same keys), but the test loss needs the parameters at step T.
    both = _curves(fam, jax.tree.map(lambda x: jnp.concatenate([x, x]), cfgs),
                   jnp.concatenate([keys, keys]), lambda lr, _: optax.adam(lr),
                   jnp.asarray(np.concatenate([default, grid[best]])), 0, num_steps)
    parts = [tuple(x[j * n:(j + 1) * n] for x in (both.losses, both.test_loss, both.final_loss))
             for j in range(2)]
    return refs.AdamReference(envelopes, best, parts[0], parts[1])


def suite_adam_reference(suite: Suite, cfgs, keys, grid, adam_factor: int,
                         reference_cache: str | None = None, say=None) -> refs.AdamReference:
    """:func:`adam_reference` on ``suite``'s tasks ``cfgs`` with seed keys ``keys`` (tasks,
    seeds), read from ``reference_cache`` when it holds them under the same key, else computed
    (and written there)."""
    say = say or (lambda msg: None)
    T, (n, num_seeds) = suite.num_steps, keys.shape[:2]
    path = None
    if reference_cache:
        key, settings = refs.reference_key(suite, n, num_seeds, adam_factor, grid)
        path = refs.cache_path(reference_cache, suite.name, key)
        ref = refs.load(path, key, say)
        if ref is not None:
            say(f"{suite.name}: Adam's runs from the reference cache {path}")
            return ref
    say(f"{suite.name}: Adam over {len(grid)} learning rates x {adam_factor * T} steps")
    ref = adam_reference(suite.task_family, cfgs, keys, grid, T, adam_factor)
    if path is not None:
        refs.save(path, key, settings, ref)
    return ref


DEFAULT_BASELINES = ("adamw", "momentum", "rmsprop", "lion", "radam")


def check_baselines(baselines) -> tuple[str, ...]:
    """The baseline names as a tuple; a LearnedOptError naming the known ones if any is unknown
    (Adam is always run and is not a baseline name here)."""
    unknown = [b for b in baselines if b not in LR_GRIDS or b == "adam"]
    if unknown:
        raise learned_opt.LearnedOptError(f"unknown baseline(s) {unknown}; known: "
                                          f"{sorted(b for b in LR_GRIDS if b != 'adam')}")
    return tuple(baselines)


def run_suite(suite: Suite, entries: list[Entry], guard=True, progress=None,
              num_seeds: int = 3, baselines=DEFAULT_BASELINES, adam_factor: int = 4,
              check_every: int = DEFAULT_CHECK_EVERY, num_tasks: int | None = None,
              reference_cache: str | None = None) -> dict:
    """Every optimizer on every task of the suite (its first ``num_tasks``, default all) with
    ``num_seeds`` seeds.

    Adam runs the grid ``LR_GRIDS["adam"]`` for ``adam_factor`` times the suite's horizon T: its
    first T steps give Adam tuned per task (and at lr=1e-3), all of it the reference curve of
    the speedup (``meta_train.evaluation.speedup``). Each baseline is tuned per task over its own
    grid (a scheduled one, ``adam_cosine``, scheduled over the suite's T) on the seed-averaged
    final training loss at T. Learned optimizers run as they are and behind each
    guard of ``guard`` (:func:`guard_kinds`: True = both) with Adam at the task's tuned learning
    rate as the fallback (the trajectory guard checks every ``check_every`` steps and at T). A
    trajectory-guarded run that ends on its fallback's parameters is scored on the fallback's
    last steps (:func:`score_on_fallback`: the fallback run is tuned Adam's own, same keys).
    ``reference_cache``: a directory where Adam's runs (:func:`adam_reference`) are kept and
    reused by later calls with the same key (``meta_train.evaluation.references``).

    Returns {"suite", "labels", "curves": {label: (tasks, seeds, T)}, "test": {label: (tasks,
    seeds)}, "final": {label: (tasks, seeds)} (training loss at the final parameters),
    "fallback": {label: (tasks, seeds)} (guard rates), "on_fallback": {label: (tasks, seeds)}
    (trajectory guards: ended on the fallback's parameters), "guard": {label: kind}, "tuned_lr":
    {label: (tasks,)}, "envelopes": (tasks, adam_factor*T), "task_labels"}."""
    fam, T = suite.task_family, suite.num_steps
    cfgs, task_keys = suite.tasks(num_tasks)
    n = len(task_keys)
    keys = seed_keys(task_keys, num_seeds)
    say = progress or (lambda msg: None)
    curves, test, final, fallback, tuned, kinds, ended = {}, {}, {}, {}, {}, {}, {}
    window = speedup_window(T)

    grid = np.asarray(LR_GRIDS["adam"], np.float32)
    ref = suite_adam_reference(suite, cfgs, keys, grid, adam_factor, reference_cache, say)
    envelopes, best = ref.envelopes, ref.best
    default = np.full(n, ev.DEFAULT_ADAM_LR, np.float32)
    for label, lrs, part in ((ADAM_DEFAULT, default, ref.default), (ADAM_TUNED, grid[best], ref.tuned)):
        curves[label], test[label], final[label] = part
        tuned[label] = lrs
    for name in baselines:
        say(f"{suite.name}: {name} over {len(LR_GRIDS[name])} learning rates")
        b_grid = np.asarray(LR_GRIDS[name], np.float32)
        runs = _grid_curves(fam, cfgs, keys, lambda lr, name=name: make_baseline(name, lr, T),
                            b_grid, T, final=True)
        b = _tune(runs.losses, b_grid, T)
        label = f"{name} tuned"
        picked = _pick(runs, b)
        curves[label], test[label], final[label] = picked.losses, picked.test_loss, picked.final_loss
        tuned[label] = b_grid[b]
    for e in entries:
        say(f"{suite.name}: {e.label}")
        run = _curves(fam, cfgs, keys, lambda _, th, e=e: e.lopt.as_optax(th, T), jnp.zeros(n),
                      e.theta, T)
        curves[e.label], test[e.label], final[e.label] = run.losses, run.test_loss, run.final_loss
        for kind in guard_kinds(guard):
            label = e.label + GUARD_SUFFIX[kind]
            say(f"{suite.name}: {label}")
            if kind == "step":
                make = lambda lr, th, e=e: guarded(e.lopt, th, optax.adam(lr), num_steps=T)  # noqa: E731
            else:
                make = lambda lr, th, e=e: trajectory_guarded(  # noqa: E731
                    e.lopt, th, optax.adam(lr), check_every=check_every, num_steps=T,
                    defer_last_check=ev.DEFER_LAST_CHECK)
            run = _curves(fam, cfgs, keys, make, jnp.asarray(grid[best]), e.theta, T, guard=True)
            curves[label], test[label], fallback[label], final[label] = (
                run.losses, run.test_loss, run.rate, run.final_loss)
            if kind == "trajectory":
                curves[label] = score_on_fallback(run.losses, run.on_fallback,
                                                  curves[ADAM_TUNED], window)
                ended[label] = np.asarray(run.on_fallback)
            kinds[label] = kind
    return {"suite": suite, "labels": list(curves), "curves": curves, "test": test,
            "final": final, "fallback": fallback, "guard": kinds, "check_every": check_every,
            "on_fallback": ended,
            "tuned_lr": tuned, "envelopes": envelopes, "window": window,
            "adam_factor": adam_factor, "num_seeds": num_seeds,
            "task_labels": [task_label(fam, cfgs, i) for i in range(n)]}


def score_on_fallback(losses, on_fallback, fallback_losses, window: int) -> np.ndarray:
    """The curves a trajectory-guarded run is scored on: a run (task, seed) whose last check
    switched returns its fallback run's final parameters, not those its own curve leads to, so its
    last ``window`` steps (what the speedup's smoothed final loss averages) are the fallback run's
    own (``fallback_losses``: the fallback alone from the same start on the same batches, e.g.
    tuned Adam's curves); every other run keeps its curve. Shapes (tasks, seeds, T) and
    (tasks, seeds)."""
    out = np.array(losses, dtype=float, copy=True)
    mask = np.asarray(on_fallback, bool)
    out[..., -window:] = np.where(mask[..., None], np.asarray(fallback_losses)[..., -window:],
                                  out[..., -window:])
    return out


def speedup_window(num_steps: int) -> int:
    """Smoothing window of the speedup metric: 2% of the horizon."""
    return max(1, num_steps // 50)


def speedups(res: dict, label: str, steps=None) -> list[list[sp.Speedup]]:
    """Per task, the speedup of ``label`` over tuned Adam at ``steps`` (default: the last)."""
    return [sp.speedup_curve(res["curves"][label][i], res["envelopes"][i], res["window"], steps)
            for i in range(len(res["envelopes"]))]


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


__all__ = ["Entry", "run_suite", "score_on_fallback", "GUARDS", "GUARD_SUFFIX", "guard_kinds", "unguarded_label", "load_entries", "seed_keys", "speedups",
           "DEFAULT_BASELINES", "check_baselines", "task_label", "ADAM_DEFAULT", "ADAM_TUNED", "grid_chunk",
           "GRID_MEMORY_BYTES"]
