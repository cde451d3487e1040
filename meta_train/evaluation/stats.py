"""Benchmark statistics over tasks and seeds: interquartile means, stratified-bootstrap
confidence intervals and performance profiles, computed with ``rliable`` (Agarwal et al.,
"Deep RL at the edge of the statistical precipice", NeurIPS 2021).

Scores are arranged as a matrix ``S`` of shape (runs, tasks): ``S[j, i]`` is seed ``j`` of task
``i`` (here: the speedup over tuned Adam of one seed's run). Every task has the same number of
seeds; tasks of several suites are concatenated along the task axis for an aggregate.

    IQM(S)          = mean of the middle 50% of all runs x tasks scores
                      (``scipy.stats.trim_mean(S, 0.25)``: drop floor(n/4) lowest and highest of n)
    frac_faster(S)  = fraction of tasks whose seed-mean score exceeds 1
    profile(S)(tau) = fraction of all runs x tasks scores above tau      (performance profile)

A 95% interval is the stratified percentile bootstrap: each replicate resamples, for every task
separately, its runs with replacement (the task set is fixed: the interval covers seed noise on
these tasks, not the choice of tasks), applies the statistic, and the interval is the 2.5% and
97.5% quantiles of the replicates. IQM is robust to the few tasks on which any optimizer
diverges or is censored (scores 0 and the censoring bound sit in the trimmed tails) while using
far more of the data than a median.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

DEFAULT_REPS = 2000
DEFAULT_TAUS = np.geomspace(0.1, 4.0, 41)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval."""
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def iqm(scores) -> float:
    """Interquartile mean of all entries of ``scores`` (runs x tasks)."""
    from rliable import metrics
    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=float)))


def frac_faster(scores, threshold: float = 1.0) -> float:
    """Fraction of tasks (columns) whose mean over runs exceeds ``threshold``."""
    s = np.asarray(scores, dtype=float)
    return float(np.mean(s.mean(axis=0) > threshold))


def score_profile(scores, taus=DEFAULT_TAUS) -> np.ndarray:
    """Fraction of all runs x tasks scores above each tau (a performance profile)."""
    s = np.asarray(scores, dtype=float).ravel()
    return np.array([np.mean(s > t) for t in np.asarray(taus, dtype=float)])


def _check(score_dict: dict) -> dict:
    out = {}
    for k, v in score_dict.items():
        a = np.asarray(v, dtype=float)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"scores of {k!r} must be a (runs, tasks) matrix, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"scores of {k!r} contain non-finite values (score a divergence as 0)")
        out[k] = a
    return out


def _intervals(score_dict: dict, func, reps: int, seed: int, size: float):
    from rliable import library
    # rliable's stratified resampling draws from numpy's global generator: seed it for
    # reproducible intervals and put the caller's state back afterwards
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():      # arch deprecates the RandomState rliable passes
            warnings.simplefilter("ignore", FutureWarning)
            points, cis = library.get_interval_estimates(
                score_dict, func, reps=reps, confidence_interval_size=size,
                random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    return points, cis


def interval_estimates(score_dict: dict, reps: int = DEFAULT_REPS, seed: int = 0,
                       size: float = 0.95) -> dict[str, dict[str, Estimate]]:
    """Per label: ``{"iqm": Estimate, "frac_faster": Estimate}`` with stratified-bootstrap
    intervals of coverage ``size`` (``reps`` replicates, seeded: the same scores give the same
    intervals)."""
    scores = _check(score_dict)
    func = lambda s: np.array([iqm(s), frac_faster(s)])  # noqa: E731
    points, cis = _intervals(scores, func, reps, seed, size)
    return {k: {name: Estimate(float(points[k][i]), float(cis[k][0][i]), float(cis[k][1][i]))
                for i, name in enumerate(("iqm", "frac_faster"))} for k in scores}


def performance_profiles(score_dict: dict, taus=DEFAULT_TAUS, reps: int = DEFAULT_REPS,
                         seed: int = 0, size: float = 0.95):
    """Per label: (profile at ``taus``, (2, len(taus)) lower/upper bootstrap bounds)."""
    scores = _check(score_dict)
    taus = np.asarray(taus, dtype=float)
    points, cis = _intervals(scores, lambda s: score_profile(s, taus), reps, seed, size)
    return {k: (np.asarray(points[k]), np.asarray(cis[k])) for k in scores}


__all__ = ["Estimate", "iqm", "frac_faster", "score_profile", "interval_estimates",
           "performance_profiles", "DEFAULT_REPS", "DEFAULT_TAUS"]
