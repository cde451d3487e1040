"""PES against closed-form gradients, antithetic sharing, and episode resets."""
import jax
import jax.numpy as jnp
import numpy as np

from meta_train.estimators import PES
from meta_train.unroll import Unroll

K = 5          # truncation length
N_TRUNC = 3    # truncations per episode
A = 0.7        # linear dynamics x_{t+1} = A x_t + theta + noise
TARGET = jnp.array([1.0, -2.0, 0.5])


def linear_unroll(noise=0.1):
    """A linear system: each step's loss is quadratic in theta, so the Gaussian-smoothed
    objective has exactly the gradient of the unsmoothed one (smoothing adds a constant),
    and additive noise independent of theta does not change that gradient either."""
    def init(theta, key):
        return jnp.zeros(3)

    def step(theta, x, key):
        x = A * x + theta["b"] + noise * jax.random.normal(key, (3,))
        return x, 0.5 * jnp.sum((x - TARGET) ** 2)

    return Unroll(init=init, step=step, episode_length=K * N_TRUNC)


def episode_objective(theta):
    """sum over truncations of the mean loss in the truncation, noise-free."""
    u = linear_unroll(noise=0.0)
    x = u.init(theta, None)
    losses = []
    for _ in range(K * N_TRUNC):
        x, l = u.step(theta, x, jax.random.PRNGKey(0))
        losses.append(l)
    return jnp.sum(jnp.stack(losses).reshape(N_TRUNC, K).mean(axis=1))


def test_pes_matches_closed_form_gradient():
    theta = {"b": jnp.array([0.3, 0.1, -0.4])}
    exact = jax.grad(episode_objective)(theta)["b"]
    pes = PES(linear_unroll(), num_pairs=2000, truncation_length=K, sigma=0.1, stagger=False)
    est_step = jax.jit(pes.estimate)
    totals = []
    for seed in range(4):
        state = pes.init(theta, jax.random.PRNGKey(seed))
        total = jnp.zeros(3)
        for i in range(N_TRUNC):
            g, state, _ = est_step(theta, state, jax.random.PRNGKey(100 * seed + i))
            total = total + g["b"]
        totals.append(total)
    mean = np.mean(np.stack(totals), axis=0)
    # Tolerance: 8000 pairs in all; the estimator's std per coordinate is ~3% of |exact|.
    np.testing.assert_allclose(mean, exact, rtol=0.1, atol=0.1 * np.abs(exact).max())
    # The gradient is far from zero, so the check is not vacuous.
    assert np.abs(exact).max() > 5.0


def test_antithetic_pairs_share_data_and_keys():
    """loss = c.theta + noise(key): with shared keys the noise cancels in L+ - L-,
    so g equals sum_i 2 (c.eps_i) eps_i / (2 M sigma^2) exactly."""
    c = jnp.array([1.0, -2.0])

    def init(theta, key):
        return jax.random.normal(key, ())  # pair members must start identical too

    def step(theta, s, key):
        return s, jnp.dot(c, theta) + 100.0 * jax.random.normal(key, ()) + 100.0 * s

    M, sigma = 8, 0.1
    pes = PES(Unroll(init, step, episode_length=K), num_pairs=M, truncation_length=K,
              sigma=sigma, stagger=False)
    theta = jnp.zeros(2)
    state = pes.init(theta, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    g, _, _ = pes.estimate(theta, state, key)
    # Re-derive eps exactly as the estimator draws it.
    k_eps = jax.random.split(key, 4)[0]
    eps = sigma * jax.random.normal(jax.random.split(k_eps, 1)[0], (M, 2))
    expected = jnp.sum(2.0 * (eps @ c)[:, None] * eps, axis=0) / (2 * M * sigma ** 2)
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-4)


def test_accumulators_reset_exactly_at_episode_end():
    pes = PES(linear_unroll(), num_pairs=3, truncation_length=K, sigma=0.1, stagger=False)
    theta = {"b": jnp.zeros(3)}
    state = pes.init(theta, jax.random.PRNGKey(0))
    est = jax.jit(pes.estimate)
    for i in range(N_TRUNC):
        prev = state
        _, state, m = est(theta, state, jax.random.PRNGKey(i))
        if i < N_TRUNC - 1:
            assert np.all(np.asarray(state.t) == K * (i + 1))
            assert np.abs(np.asarray(state.accum["b"])).min() > 0
            assert int(m["episodes_ended"]) == 0
            # The inner state carries over (not reset).
            assert np.abs(np.asarray(state.inner)).max() > 0
        else:
            assert np.all(np.asarray(state.t) == 0)
            np.testing.assert_array_equal(np.asarray(state.accum["b"]), 0.0)
            np.testing.assert_array_equal(np.asarray(state.inner), 0.0)
            assert int(m["episodes_ended"]) == 3
    del prev


def test_nonfinite_pairs_are_masked_and_reset():
    def init(theta, key):
        return jnp.zeros(())

    def step(theta, s, key):
        bad = jax.random.uniform(key) < 0.5   # about half the pairs blow up
        loss = jnp.where(bad, jnp.nan, jnp.sum(theta ** 2))
        return s, loss

    pes = PES(Unroll(init, step, episode_length=100 * K), num_pairs=16, truncation_length=1,
              sigma=0.1, stagger=False)
    theta = jnp.ones(2)
    state = pes.init(theta, jax.random.PRNGKey(0))
    g, state, m = pes.estimate(theta, state, jax.random.PRNGKey(3))
    assert np.all(np.isfinite(np.asarray(g)))
    assert 0 < int(m["nonfinite_particles"]) < 32
    assert 2 * int(m["episodes_ended"]) == int(m["nonfinite_particles"])


def test_grouped_population_computes_the_same_estimates():
    """``vmap_groups > 1`` runs the particles as independent vmapped groups inside the scan (the
    trainer's setting on one CPU device): the estimates and states equal one vmap over all, for
    PES and truncated ES, over several truncations with resets, whatever the group sizes."""
    from meta_train.estimators import TruncatedES
    theta = {"b": jnp.array([0.3, 0.1, -0.4])}
    for make in (lambda: PES(linear_unroll(), num_pairs=3, truncation_length=K, sigma=0.1),
                 lambda: TruncatedES(linear_unroll(), num_pairs=3, truncation_length=K, sigma=0.1)):
        results = []
        for groups in (1, 2, 4):
            est = make()
            est.vmap_groups = groups
            state = est.init(theta, jax.random.PRNGKey(0))
            grads = []
            for i in range(2 * N_TRUNC + 1):
                g, state, m = jax.jit(est.estimate)(theta, state, jax.random.PRNGKey(i))
                grads.append(g["b"])
            results.append((np.stack(grads), jax.tree.map(np.asarray, state)))
        for grads, state in results[1:]:
            np.testing.assert_allclose(grads, results[0][0], rtol=1e-6, atol=1e-6)
            for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(results[0][1])):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert np.abs(results[0][0]).max() > 0.1


def _episode_totals(est, theta, seeds):
    """Each seed's estimate summed over one whole (unstaggered) episode of N_TRUNC truncations."""
    step = jax.jit(est.estimate)
    totals = []
    for seed in seeds:
        state = est.init(theta, jax.random.PRNGKey(seed))
        total = jnp.zeros(3)
        for i in range(N_TRUNC):
            g, state, _ = step(theta, state, jax.random.PRNGKey(1000 * seed + i))
            total = total + g["b"]
        totals.append(np.asarray(total))
    return np.stack(totals)


def test_nres_is_unbiased_and_has_lower_variance_than_pes():
    """NRES (one eps per episode) on the linear system: summed over an episode its mean matches the
    closed-form gradient of the smoothed episode objective (equal to the unsmoothed one: the loss
    is quadratic). At equal compute (16 pairs, one truncation per estimate, staggered episodes of
    10 truncations, the way meta-training runs) the variance of one estimate is below PES's: PES's
    accumulator sums a fresh eps per truncation, NRES reuses one (measured: about half)."""
    from meta_train.estimators import NRES
    theta = {"b": jnp.array([0.3, 0.1, -0.4])}
    exact = np.asarray(jax.grad(episode_objective)(theta)["b"])
    nres = _episode_totals(NRES(linear_unroll(), num_pairs=64, truncation_length=K, sigma=0.1,
                                stagger=False), theta, range(40))
    se = nres.std(axis=0) / np.sqrt(len(nres))
    assert np.all(np.abs(nres.mean(axis=0) - exact) < 4 * se + 1e-3), (nres.mean(0), exact, se)
    assert np.abs(exact).max() > 10 * se.max()          # not vacuous

    n_trunc = 10
    base = linear_unroll()
    long_unroll = Unroll(base.init, base.step, episode_length=K * n_trunc)

    def steady_state_estimates(cls):
        est = cls(long_unroll, num_pairs=16, truncation_length=K, sigma=0.1, stagger=True)
        step = jax.jit(est.estimate)
        out = []
        for seed in range(20):
            state = est.init(theta, jax.random.PRNGKey(seed))
            for i in range(3 * n_trunc):
                g, state, _ = step(theta, state, jax.random.PRNGKey(1000 * seed + i))
                if i >= n_trunc:       # past the first (staggered) episodes
                    out.append(np.asarray(g["b"]))
        return np.stack(out)

    g_nres, g_pes = steady_state_estimates(NRES), steady_state_estimates(PES)
    assert g_nres.var(axis=0).sum() < 0.75 * g_pes.var(axis=0).sum()


def test_final_objective_counts_only_the_last_truncation():
    """objective="final": the summed estimate over an episode matches the gradient of the last
    truncation's mean loss alone (not of the sum over truncations)."""
    theta = {"b": jnp.array([0.3, 0.1, -0.4])}

    def final_objective(th):
        u = linear_unroll(noise=0.0)
        x, losses = u.init(th, None), []
        for _ in range(K * N_TRUNC):
            x, l = u.step(th, x, jax.random.PRNGKey(0))
            losses.append(l)
        return jnp.mean(jnp.stack(losses)[-K:])

    exact = np.asarray(jax.grad(final_objective)(theta)["b"])
    full = np.asarray(jax.grad(episode_objective)(theta)["b"])
    assert np.abs(exact - full).max() > 1.0   # the two objectives differ here
    pes = PES(linear_unroll(), num_pairs=2000, truncation_length=K, sigma=0.1, stagger=False,
              objective="final")
    mean = _episode_totals(pes, theta, range(4)).mean(axis=0)
    np.testing.assert_allclose(mean, exact, rtol=0.1, atol=0.1 * np.abs(exact).max())
