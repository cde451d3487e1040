"""Speedup over tuned Adam: the reference envelope, steps-to-reach, censoring and divergence
against curves whose answers are known in closed form."""
import numpy as np
import pytest

from meta_train.evaluation import speedup as sp

S = np.arange(1, 101, dtype=float)          # Adam's 100 steps


def _adam(*curves):
    """(lrs, seeds=2, steps) from one curve per learning rate (both seeds equal)."""
    return np.stack([np.stack([c, c]) for c in curves])


def test_envelope_is_the_monotone_lower_envelope_over_learning_rates():
    fast_then_stuck = np.maximum(1.0 / S, 0.05)          # best early
    slow_but_deep = 2.0 / S                               # best after step 40
    spiky = slow_but_deep.copy()
    spiky[60] = 5.0                                       # a spike the envelope must ignore
    env = sp.reference_envelope(_adam(fast_then_stuck, spiky), window=1)
    expect = np.minimum.accumulate(np.minimum(fast_then_stuck, np.where(S == 61, np.inf, 2.0 / S)))
    np.testing.assert_allclose(env, expect)
    assert np.all(np.diff(env) <= 0)


def test_a_seed_that_diverges_ends_its_learning_rates_contribution():
    slow, fast = 2.0 / S, 1.0 / S
    runs = _adam(slow, fast)
    runs[1, 0, 69:] = np.nan                              # one seed of the faster lr blew up at step 70
    env = sp.reference_envelope(runs, window=1)
    # what Adam reached before the blow-up still counts (monotone), nothing after it
    np.testing.assert_allclose(env, np.where(S < 70, 1.0 / S, 1.0 / 69))


def test_speedup_is_adam_steps_to_reach_over_t():
    env = sp.reference_envelope(_adam(1.0 / S), window=1)  # Adam reaches 1/s at step s
    assert sp.steps_to_reach(env, 0.02) == 50
    assert sp.steps_to_reach(env, 0.0201) == 50          # first step at or below the loss
    assert sp.steps_to_reach(env, 0.005) is None
    t = np.arange(1, 51, dtype=float)
    twice_as_fast = np.stack([1.0 / (2 * t), 1.0 / (2 * t)])   # reaches Adam's loss at 2t by step t
    (s,) = sp.speedup_curve(twice_as_fast, env, window=1)
    assert s == sp.Speedup(2.0, False, False)
    at = sp.speedup_curve(twice_as_fast, env, window=1, steps=[10, 25])
    assert [x.value for x in at] == [2.0, 2.0]


def test_below_everything_adam_reached_is_censored_at_its_lower_bound():
    env = sp.reference_envelope(_adam(1.0 / S), window=1)
    t = np.arange(1, 51, dtype=float)
    (s,) = sp.speedup_curve(np.stack([1.0 / (4 * t)] * 2), env, window=1)   # true speedup 4
    assert s.censored and s.value == pytest.approx(100 / 50) and sp.fmt(s) == "≥2.00"


def test_divergence_nan_or_ending_above_the_start():
    env = sp.reference_envelope(_adam(1.0 / S), window=1)
    rising = np.stack([np.linspace(1.0, 2.0, 50)] * 2)
    nan = np.stack([np.full(50, 0.5), np.r_[np.full(49, 0.5), np.nan]])
    for c in (rising, nan):
        (s,) = sp.speedup_curve(c, env, window=5)
        assert s.diverged and s.value == 0.0 and sp.fmt(s) == "diverged"


def test_aggregate_counts_and_marks_a_censored_median_as_a_bound():
    S_ = sp.Speedup
    a = sp.aggregate([S_(0.5, False, False), S_(1.5, False, False), S_(2.0, True, False),
                      S_(0.0, False, True)])
    assert a["median"] == pytest.approx(1.0) and a["frac_faster"] == 0.5
    assert (a["censored"], a["diverged"], a["num_tasks"]) == (1, 1, 4)
    assert not a["median_is_bound"]
    b = sp.aggregate([S_(2.0, True, False), S_(1.2, False, False), S_(3.0, False, False)])
    assert b["median"] == 2.0 and b["median_is_bound"]


def test_a_guarded_run_that_ends_on_its_fallback_is_scored_on_the_fallbacks_last_steps():
    """compare.score_on_fallback: runs flagged as ending on the fallback's parameters get the
    fallback run's last `window` losses (so their speedup is the fallback's), the others keep
    their own curves; the inputs are not modified."""
    from meta_train.evaluation.compare import score_on_fallback
    rng = np.random.default_rng(0)
    own, fb = rng.uniform(1, 2, (3, 2, 10)), rng.uniform(0, 1, (3, 2, 10))
    ended = np.array([[True, False], [False, False], [False, True]])
    before = own.copy()
    out = score_on_fallback(own, ended, fb, window=4)
    np.testing.assert_array_equal(own, before)
    for i in range(3):
        for j in range(2):
            want = np.concatenate([own[i, j, :6], (fb if ended[i, j] else own)[i, j, 6:]])
            np.testing.assert_array_equal(out[i, j], want)
    env = np.linspace(2.0, 0.0, 40)
    window = 4
    scored = sp.speedup_curve(out[0, 0][None], env, window)[0].value
    assert scored == sp.speedup_curve(fb[0, 0][None], env, window)[0].value
