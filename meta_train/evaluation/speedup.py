"""Speedup over tuned Adam (the learned_optimization / VeLO metric).

Adam is run on a task at a grid of learning rates with several seeds. Its **reference
curve** maps a loss value to the number of Adam steps needed to reach it:

    A_lr(s)  = smooth_w( mean over seeds of Adam's training loss at step s, lr )
    E(s)     = min_s'<=s  min_lr A_lr(s')          (lower envelope, made monotone)
    reach(L) = min { s : E(s) <= L }               (None when Adam never gets to L)

An optimizer whose seed-averaged, equally smoothed curve is ``C(t)`` has

    speedup(t) = reach(C(t)) / t.

When ``C(t)`` is below everything Adam reached in its ``len(E)`` steps the speedup is
*censored*: it is at least ``len(E) / t`` and is reported as that lower bound (so run Adam
longer than the optimizer, e.g. 4x, to resolve speedups up to 4). A curve that is not finite,
or ends above where it started, has *diverged* (speedup 0).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from meta_train.evaluation.curves import smooth


def _mean_over_seeds(curves: np.ndarray) -> np.ndarray:
    """Mean over the seed axis (-2); a seed that is not finite makes the step inf."""
    c = np.asarray(curves, dtype=float)
    return np.where(np.all(np.isfinite(c), axis=-2), np.nan_to_num(c, nan=np.inf).mean(axis=-2),
                    np.inf)


def reference_envelope(adam_curves: np.ndarray, window: int) -> np.ndarray:
    """E(s) for one task from Adam's curves of shape (lrs, seeds, steps)."""
    a = smooth(_mean_over_seeds(adam_curves), window)          # (lrs, steps)
    a = np.where(np.isfinite(a), a, np.inf)
    return np.minimum.accumulate(a.min(axis=0))


def steps_to_reach(envelope: np.ndarray, loss: float) -> int | None:
    """First step (1-based) at which the monotone envelope is <= loss, None if never."""
    if not np.isfinite(loss):
        return None
    hit = np.searchsorted(-envelope, -loss, side="left")    # envelope is non-increasing
    return int(hit) + 1 if hit < len(envelope) else None


@dataclasses.dataclass(frozen=True)
class Speedup:
    value: float          # reach / t; a lower bound when censored; 0 when diverged
    censored: bool        # the optimizer got below everything Adam reached
    diverged: bool


def diverged(curve: np.ndarray, window: int) -> bool:
    """Non-finite anywhere, or the smoothed curve ends above its first value."""
    c = np.asarray(curve, dtype=float)
    if not np.all(np.isfinite(c)):
        return True
    s = smooth(c, window)
    return bool(s[-1] > c[0])


def speedup_curve(curves: np.ndarray, envelope: np.ndarray, window: int,
                  steps: np.ndarray | None = None) -> list[Speedup]:
    """Speedup at each step in ``steps`` (1-based; default: the last step) of an optimizer
    whose training curves on one task have shape (seeds, T)."""
    c = _mean_over_seeds(curves)
    T = c.shape[-1]
    steps = np.asarray([T] if steps is None else steps)
    if diverged(c, window):
        return [Speedup(0.0, False, True) for _ in steps]
    s = smooth(c, window)
    out = []
    for t in steps:
        r = steps_to_reach(envelope, s[t - 1])
        out.append(Speedup(len(envelope) / t, True, False) if r is None else Speedup(r / t, False, False))
    return out


def aggregate(speedups: list[Speedup]) -> dict:
    """Across tasks: median and quartiles (censored values count as their lower bound, so
    these are lower bounds too), fraction of tasks faster than Adam, counts."""
    v = np.array([s.value for s in speedups], dtype=float)
    med = float(np.median(v))
    return {"median": med,
            # the median is only a lower bound when a censored task sits at or below it
            "median_is_bound": bool(any(s.censored and s.value <= med for s in speedups)), "q25": float(np.quantile(v, 0.25)),
            "q75": float(np.quantile(v, 0.75)),
            "frac_faster": float(np.mean(v > 1.0)),
            "censored": int(sum(s.censored for s in speedups)),
            "diverged": int(sum(s.diverged for s in speedups)),
            "num_tasks": len(speedups)}


def fmt(s: Speedup) -> str:
    if s.diverged:
        return "diverged"
    return f"≥{s.value:.2f}" if s.censored else f"{s.value:.2f}"


__all__ = ["reference_envelope", "steps_to_reach", "speedup_curve", "aggregate", "diverged",
           "Speedup", "fmt"]
