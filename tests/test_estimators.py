"""All four outer estimators under one interface: against analytic gradients where they
should agree, truncation bias where they should not, options, and NaN masking."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_train.estimators import (PES, EstimatorError, FullES, TruncatedBPTT, TruncatedES,
                                   make_estimator)
from meta_train.unroll import Unroll

# ---------------------------------------------------------------------------------------
# A smooth short-episode problem: x_{t+1} = A x_t + b, loss 0.5 |x - target|^2. Every loss
# is quadratic in theta, so Gaussian smoothing only adds a constant: the ES estimators'
# expectations equal the exact gradients.
A, T_SHORT = 0.7, 6
TARGET = jnp.array([1.0, -2.0, 0.5])
THETA = {"b": jnp.array([0.3, 0.1, -0.4])}


def short_unroll():
    def init(theta, key):
        return jnp.zeros(3)

    def step(theta, x, key):
        x = A * x + theta["b"]
        return x, 0.5 * jnp.sum((x - TARGET) ** 2)

    return Unroll(init, step, episode_length=T_SHORT)


def episode_losses(theta):
    u, x, out = short_unroll(), jnp.zeros(3), []
    for _ in range(T_SHORT):
        x, loss = u.step(theta, x, None)
        out.append(loss)
    return jnp.stack(out)


EXACT_MEAN = jax.grad(lambda th: jnp.mean(episode_losses(th)))(THETA)["b"]
EXACT_LAST = jax.grad(lambda th: episode_losses(th)[-1])(THETA)["b"]


def one_estimate(est, seed=0):
    state = est.init(THETA, jax.random.PRNGKey(seed))
    g, _, metrics = jax.jit(est.estimate)(THETA, state, jax.random.PRNGKey(seed + 1))
    return np.asarray(g["b"]), metrics


def test_tbptt_over_the_whole_episode_is_the_exact_gradient():
    est = TruncatedBPTT(short_unroll(), num_particles=3, truncation_length=T_SHORT, stagger=False)
    g, m = one_estimate(est)
    np.testing.assert_allclose(g, EXACT_MEAN, rtol=1e-5)
    assert int(m["episodes_ended"]) == 3 and int(m["nonfinite_particles"]) == 0


@pytest.mark.parametrize("loss,exact", [("mean", EXACT_MEAN), ("last", EXACT_LAST)])
def test_full_es_matches_the_analytic_gradient(loss, exact):
    g, _ = one_estimate(FullES(short_unroll(), num_pairs=4000, sigma=0.05, loss=loss))
    # 4000 antithetic pairs: the std per coordinate is ~2% of |exact|.
    np.testing.assert_allclose(g, exact, rtol=0.1, atol=0.08 * np.abs(exact).max())
    assert np.abs(exact).max() > 1.0


def test_one_truncation_per_episode_makes_tes_and_pes_full_es():
    for cls in (TruncatedES, PES):
        est = cls(short_unroll(), num_pairs=4000, truncation_length=T_SHORT, sigma=0.05, stagger=False)
        g, _ = one_estimate(est)
        np.testing.assert_allclose(g, EXACT_MEAN, rtol=0.1, atol=0.08 * np.abs(EXACT_MEAN).max())


def test_independent_perturbations_with_baselines_are_unbiased():
    """antithetic=False: PES with a leave-one-out baseline and truncated ES with the
    unperturbed particle as baseline."""
    for cls in (PES, TruncatedES):
        est = cls(short_unroll(), num_pairs=4000, truncation_length=T_SHORT, sigma=0.05,
                  stagger=False, antithetic=False)
        g, _ = one_estimate(est)
        np.testing.assert_allclose(g, EXACT_MEAN, rtol=0.15, atol=0.1 * np.abs(EXACT_MEAN).max())


def test_loss_clip_and_sign_trick():
    kw = dict(num_pairs=2000, truncation_length=T_SHORT, sigma=0.05, stagger=False)
    # The sign trick points along the gradient: E[sign(eps.g) eps] = sigma sqrt(2/pi) g/|g|,
    # so E[g] = sqrt(2/pi) / (2 sigma) g/|g| (the 2 of the antithetic normalisation).
    g_sign, _ = one_estimate(PES(short_unroll(), sign_delta=1.0, **kw))
    cos = g_sign @ EXACT_MEAN / (np.linalg.norm(g_sign) * np.linalg.norm(EXACT_MEAN))
    assert cos > 0.98
    np.testing.assert_allclose(np.linalg.norm(g_sign), np.sqrt(2 / np.pi) / (2 * 0.05), rtol=0.1)
    # Clipping at a tiny c leaves c * sign(difference): the sign trick scaled by c.
    g_clip, _ = one_estimate(PES(short_unroll(), loss_clip=1e-6, **kw))
    np.testing.assert_allclose(g_clip, 1e-6 * g_sign, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Truncation bias. v_{t+1} = lam v_t + (1 - lam) theta, x = theta - C v, loss (x - 1)^2 +
# BETA theta^2, v_0 = 0, episodes of T steps. theta raises x at once but lowers it later
# (C > 1), so the long-horizon gradient and a short truncation's disagree in sign.
LAM, C, BETA, T_LONG = 0.9, 2.0, 1.0, 100
_a = 1 - C * (1 - LAM ** np.arange(1, T_LONG + 1))       # x_t = a_t theta along an episode
THETA_STAR = _a.sum() / ((_a ** 2).sum() + BETA * T_LONG)  # argmin of the mean episode loss
_d = 1 - C * (1 - LAM)                                    # dx/dtheta inside a 1-step truncation
THETA_TRUNCATED = _d / (_d * _a.mean() + BETA)            # where the K=1 truncated gradient is 0


def influence_unroll():
    def init(theta, key):
        return jnp.zeros(())

    def step(theta, v, key):
        v = LAM * v + (1 - LAM) * theta
        return v, (theta - C * v - 1.0) ** 2 + BETA * theta ** 2

    return Unroll(init, step, episode_length=T_LONG)


BIAS_ESTIMATORS = {
    "pes": lambda u: PES(u, num_pairs=64, truncation_length=1, sigma=0.1),
    "tes": lambda u: TruncatedES(u, num_pairs=64, truncation_length=1, sigma=0.1),
    "tbptt": lambda u: TruncatedBPTT(u, num_particles=128, truncation_length=1),
}


def meta_train(est, steps=1500, lr=0.05, average_last=500):
    """SGD on theta from 0 with the estimator's gradients; mean of the last iterates."""
    opt = optax.sgd(lr)

    @jax.jit
    def outer(theta, est_state, opt_state, key):
        g, est_state, _ = est.estimate(theta, est_state, key)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(theta, updates), est_state, opt_state

    theta = jnp.asarray(0.0)
    est_state, opt_state = est.init(theta, jax.random.PRNGKey(0)), opt.init(theta)
    trace = []
    for i in range(steps):
        theta, est_state, opt_state = outer(theta, est_state, opt_state, jax.random.PRNGKey(i + 1))
        trace.append(float(theta))
    return float(np.mean(trace[-average_last:]))


def test_pes_is_unbiased_where_truncation_flips_the_gradient_sign():
    assert THETA_STAR < -0.4 and THETA_TRUNCATED > 2.0          # opposite signs, far apart
    exact_at_0 = float(jax.grad(lambda th: jnp.mean(jnp.stack(
        [(a * th - 1.0) ** 2 + BETA * th ** 2 for a in _a])))(0.0))   # +1.64
    u = influence_unroll()
    # Mean estimate at theta = 0 over 300 truncations of 64 pairs / 128 particles.
    means = {}
    for name, make in BIAS_ESTIMATORS.items():
        est = make(u)
        state, step = est.init(jnp.asarray(0.0), jax.random.PRNGKey(7)), jax.jit(est.estimate)
        gs = []
        for i in range(300):
            g, state, _ = step(jnp.asarray(0.0), state, jax.random.PRNGKey(1000 + i))
            gs.append(float(g))
        means[name] = np.mean(gs[50:])
    # Measured: pes 1.67, tes -1.60, tbptt -1.60 (exact: +1.64; truncated: 2 d (0 - 1) = -1.6).
    assert abs(means["pes"] - exact_at_0) < 0.25 * exact_at_0
    np.testing.assert_allclose(means["tbptt"], -2 * _d, rtol=1e-5)
    assert abs(means["tes"] + 2 * _d) < 0.1

    # Meta-training from theta = 0: measured pes -0.41, tes 2.335, tbptt 2.332 (theta* -0.453,
    # truncated fixed point 2.333).
    finals = {name: meta_train(make(u)) for name, make in BIAS_ESTIMATORS.items()}
    assert abs(finals["pes"] - THETA_STAR) < 0.12
    assert abs(finals["tes"] - THETA_TRUNCATED) < 0.1
    assert abs(finals["tbptt"] - THETA_TRUNCATED) < 0.05


def test_full_es_reaches_the_long_horizon_optimum():
    theta = meta_train(FullES(influence_unroll(), num_pairs=16, sigma=0.1), steps=200, average_last=50)
    assert abs(theta - THETA_STAR) < 0.05     # measured -0.453


# ---------------------------------------------------------------------------------------
def poisoned_unroll():
    """Particles whose init key draws u < 0.3 produce NaN (or inf) losses every step; the
    rest minimise |theta - 1|^2."""
    def init(theta, key):
        u = jax.random.uniform(key)
        return {"bad": u < 0.3, "inf": u < 0.15}

    def step(theta, s, key):
        loss = jnp.sum((theta - 1.0) ** 2)
        # (The poison must not reach clean particles' gradients through jnp.where.)
        loss = jnp.where(s["bad"], jnp.where(s["inf"], jnp.inf, jnp.nan), loss)
        return s, loss

    return Unroll(init, step, episode_length=40)


@pytest.mark.parametrize("name", ["pes", "tes", "full_es", "tbptt"])
def test_nonfinite_particles_are_masked_and_counted(name):
    u = poisoned_unroll()
    est = {"pes": PES(u, num_pairs=32, truncation_length=4, sigma=0.1),
           "tes": TruncatedES(u, num_pairs=32, truncation_length=4, sigma=0.1),
           "full_es": FullES(u, num_pairs=32, sigma=0.1),
           "tbptt": TruncatedBPTT(u, num_particles=64, truncation_length=4)}[name]
    theta = jnp.zeros(2)
    state = est.init(theta, jax.random.PRNGKey(0))
    step = jax.jit(est.estimate)
    if name in ("pes", "tes", "tbptt"):   # the poisoned ones are visible in the initial state
        bad = np.asarray(state.inner["bad"])
        expected_bad = int(bad.sum()) * (2 if name == "tes" else 1)
    for i in range(30):
        g, state, m = step(theta, state, jax.random.PRNGKey(i))
        assert np.all(np.isfinite(np.asarray(g)))
        if i == 0:
            n_bad = int(m["nonfinite_particles"])
            assert 0 < n_bad < 64
            if name in ("pes", "tes", "tbptt"):
                assert n_bad == expected_bad
        theta = theta - 0.1 * g
    # theta still learns from the clean particles: from 0 towards 1.
    np.testing.assert_allclose(np.asarray(theta), 1.0, atol=0.15)


def test_make_estimator_builds_the_configured_estimator():
    from meta_train.config import ConfigError, TrainConfig
    u = short_unroll()
    for name, cls in [("pes", PES), ("tes", TruncatedES), ("full_es", FullES), ("tbptt", TruncatedBPTT)]:
        est = make_estimator(TrainConfig(estimator=name, num_pairs=3), u)
        assert type(est) is cls
    assert make_estimator(TrainConfig(estimator="tbptt", num_pairs=3), u).N == 6
    with pytest.raises(ConfigError, match="unknown estimator"):
        TrainConfig(estimator="es")
    with pytest.raises(EstimatorError, match="never ends"):
        FullES(Unroll(u.init, u.step, episode_length=None))
