"""The LOLv2 MLP learned optimizer against its formulas, the optax adapter, vmap, baselines."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import features as F
from learned_opt.base import config_from_dict, config_to_dict
from learned_opt.mlp_lopt import MLPLOpt, MLPLOptConfig

DECAYS = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
SCALES = np.array([1, 3, 10, 30, 100, 300, 1000, 3000, 1e4, 3e4, 1e5])
KEY = jax.random.PRNGKey(0)

P = {"w": np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32),
     "b": np.array([0.1, -0.2], np.float32),
     "s": np.array(3.0, np.float32)}
G1 = {"w": np.array([[1.0, -2.0], [0.5, 0.0], [3.0, -1.0]], np.float32),
      "b": np.array([-0.3, 0.6], np.float32),
      "s": np.array(-2.0, np.float32)}
G2 = {"w": np.array([[-0.5, 1.0], [2.0, 1.0], [0.0, 0.5]], np.float32),
      "b": np.array([0.2, 0.4], np.float32),
      "s": np.array(0.7, np.float32)}


def np_features(g1, g2, p, t):
    """Hand-written LOLv2 inputs for one tensor at the 2nd step (momenta updated twice)."""
    m = DECAYS * (1 - DECAYS) * g1[..., None] + (1 - DECAYS) * g2[..., None]
    raw = np.concatenate([g2[..., None], p[..., None], m], axis=-1).astype(np.float64)
    axes = tuple(range(raw.ndim - 1))
    norm = raw / np.sqrt(1e-5 + np.mean(raw ** 2, axis=axes, keepdims=True))
    tf = np.broadcast_to(np.tanh(t / SCALES - 1.0), p.shape + (11,))
    return np.concatenate([norm, tf], axis=-1), m


def np_mlp(theta, x):
    """Independent numpy forward pass of the optimizer's MLP; returns (d, m)."""
    layers = [theta["mlp"][f"linear_{i}"] for i in range(len(theta["mlp"]))]
    for i, layer in enumerate(layers):
        x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x[..., 0], x[..., 1]


def test_features_equal_formula_after_two_updates():
    lopt = MLPLOpt()
    theta = lopt.init(KEY)
    state = lopt.opt_init(theta, P)
    assert state.iteration.dtype == jnp.int32 and int(state.iteration) == 0
    _, state = jax.jit(lopt.opt_update)(theta, state, G1, P, jnp.float32(1.0), KEY)
    assert int(state.iteration) == 1
    for k in P:  # after one update m_k = (1 - d_k) g1
        np.testing.assert_allclose(state.momenta[k], (1 - DECAYS) * G1[k][..., None], rtol=1e-6)
    inputs, new_m = jax.jit(lopt.features)(state, G2, P)
    for k in P:
        want, want_m = np_features(G1[k], G2[k], P[k], t=1.0)
        assert inputs[k].shape == P[k].shape + (19,)
        np.testing.assert_allclose(new_m[k], want_m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(inputs[k], want, rtol=1e-5, atol=1e-6)


def test_time_features_at_known_t():
    lopt = MLPLOpt()
    state = lopt.opt_init(None, P)._replace(iteration=jnp.int32(1000))
    inputs, _ = jax.jit(lopt.features)(state, G2, P)
    tf = np.asarray(inputs["w"][1, 0, 8:])
    # tanh(1000/s - 1): s=1000 -> tanh(0) = 0; s=3000 -> tanh(-2/3); s=1 -> tanh(999) = 1
    np.testing.assert_allclose(tf[6], 0.0, atol=1e-7)
    np.testing.assert_allclose(tf[7], np.tanh(-2 / 3), rtol=1e-6)
    np.testing.assert_allclose(tf[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(tf[10], np.tanh(1000 / 1e5 - 1), rtol=1e-6)
    np.testing.assert_allclose(F.time_features(0), np.full(11, np.tanh(-1.0)), rtol=1e-6)


def test_second_moment_normalize_per_channel():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.0
    got = F.second_moment_normalize(jnp.asarray(x))
    want = x / np.sqrt(1e-5 + (x ** 2).reshape(6, 4).mean(0))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # every channel now has unit second moment (up to eps)
    np.testing.assert_allclose(np.mean(np.asarray(got) ** 2, axis=(0, 1)), 1.0, rtol=1e-4)


def test_step_formula_matches_network():
    cfg = MLPLOptConfig(step_mult=0.1, exp_mult=0.5, output_init_scale=1.0)
    lopt = MLPLOpt(cfg)
    theta = lopt.init(jax.random.PRNGKey(3))
    state = lopt.opt_init(theta, P)
    _, state = jax.jit(lopt.opt_update)(theta, state, G1, P, 0.0, KEY)
    new_p, new_state = jax.jit(lopt.opt_update)(theta, state, G2, P, jnp.float32(0.0), KEY)
    assert int(new_state.iteration) == 2
    for k in P:
        x, _ = np_features(G1[k], G2[k], P[k], t=1.0)
        d, m = np_mlp(theta, x)
        d_net, m_net = lopt.network(theta, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(d_net, d, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m_net, m, rtol=1e-4, atol=1e-5)
        assert np.abs(0.5 * m).max() > 0.05  # the exp term is exercised
        want = P[k] - 0.1 * d * np.exp(0.5 * m)
        np.testing.assert_allclose(new_p[k], want, rtol=1e-4, atol=1e-5)


def test_untrained_optimizer_takes_small_steps():
    lopt = MLPLOpt()
    theta = lopt.init(KEY)
    new_p, _ = jax.jit(lopt.opt_update)(theta, lopt.opt_init(theta, P), G1, P, 0.0, KEY)
    step = max(float(np.abs(new_p[k] - P[k]).max()) for k in P)
    assert 0 < step < 1e-4   # step_mult (1e-3) * output_init_scale (1e-2) * O(1)


def descent_theta(lopt, channel=4, sign=1.0):
    """theta whose output is d = sign * (normalised input ``channel``), m = 0.

    Channel 4 is the momentum with decay 0.9; d = relu(x) - relu(-x) = x exactly.
    """
    theta = jax.tree.map(jnp.zeros_like, lopt.init(KEY))
    mlp = theta["mlp"]
    mlp["linear_0"]["w"] = mlp["linear_0"]["w"].at[channel, 0].set(1.0).at[channel, 1].set(-1.0)
    mlp["linear_1"]["w"] = mlp["linear_1"]["w"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    mlp["linear_2"]["w"] = mlp["linear_2"]["w"].at[0, 0].set(sign).at[1, 0].set(-sign)
    return theta


def linear_regression():
    kx, kw = jax.random.split(jax.random.PRNGKey(42))
    x = jax.random.normal(kx, (64, 5))
    w_true = jax.random.normal(kw, (5,))
    y = x @ w_true + 0.5

    def loss(p):
        return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return loss, {"w": jnp.zeros(5), "b": jnp.zeros(())}


def run_optax(tx, loss, params, steps):
    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


def test_as_optax_trains_linear_regression():
    lopt = MLPLOpt(step_mult=0.02)
    loss, params = linear_regression()
    l0 = float(loss(params))
    final = run_optax(learned_opt.as_optax(lopt, descent_theta(lopt)), loss, params, 300)
    assert float(loss(final)) < 0.01 * l0, (l0, float(loss(final)))
    # the same theta with the sign flipped must make things worse: the test has teeth
    worse = run_optax(lopt.as_optax(descent_theta(lopt, sign=-1.0)), loss, params, 50)
    assert float(loss(worse)) > 2 * l0


def test_as_optax_updates_equal_learned_step():
    lopt = MLPLOpt(output_init_scale=1.0)
    theta = lopt.init(KEY)
    tx = learned_opt.as_optax(lopt, theta)
    state = tx.init(P)
    assert state.key is None  # the MLP optimizer uses no randomness
    updates, state = jax.jit(tx.update)(G1, state, P)  # value defaults to 0
    want, _ = jax.jit(lopt.opt_update)(theta, lopt.opt_init(theta, P), G1, P, 0.0, KEY)
    got = optax.apply_updates(P, updates)
    for k in P:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert int(state.opt_state.iteration) == 1
    with pytest.raises(learned_opt.LearnedOptError, match="params"):
        tx.update(G1, state)
    # composes with other optax transformations that take extra args
    chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
    cs = chained.init(P)
    u, _ = jax.jit(chained.update)(G1, cs, P, value=jnp.float32(1.0))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(u))


def test_vmap_over_thetas_and_params():
    lopt = MLPLOpt(output_init_scale=1.0)
    thetas = jax.vmap(lopt.init)(jax.random.split(KEY, 3))
    state = lopt.opt_init(None, P)
    update = jax.jit(lopt.opt_update)
    upd = jax.jit(jax.vmap(lambda th: lopt.opt_update(th, state, G1, P, 0.0, KEY)[0]))
    batched = upd(thetas)
    for i in range(3):
        th = jax.tree.map(lambda a: a[i], thetas)
        single, _ = update(th, state, G1, P, 0.0, KEY)
        for k in P:
            np.testing.assert_allclose(batched[k][i], single[k], rtol=1e-5, atol=1e-7)
    # different thetas give different steps
    assert not np.allclose(batched["w"][0], batched["w"][1])

    # a batch of parameter sets (per-member normalisation) with one theta
    theta = jax.tree.map(lambda a: a[0], thetas)
    ps = jax.tree.map(lambda a, b: jnp.stack([a, 3 * b]), P, G2)
    gs = jax.tree.map(lambda a, b: jnp.stack([a, b]), G1, G2)
    states = jax.vmap(lambda p: lopt.opt_init(theta, p))(ps)
    out, new_states = jax.jit(jax.vmap(lopt.opt_update, in_axes=(None, 0, 0, 0, None, None)))(
        theta, states, gs, ps, 0.0, KEY)
    assert new_states.iteration.shape == (2,)
    for i in range(2):
        pi, gi = jax.tree.map(lambda a: a[i], ps), jax.tree.map(lambda a: a[i], gs)
        single, _ = update(theta, lopt.opt_init(theta, pi), gi, pi, 0.0, KEY)
        for k in P:
            np.testing.assert_allclose(out[k][i], single[k], rtol=1e-5, atol=1e-7)


def test_meta_gradient_through_update_is_finite():
    lopt = MLPLOpt(output_init_scale=1.0)
    theta = lopt.init(KEY)
    loss, params = linear_regression()

    def meta_loss(th):
        p, s = params, lopt.opt_init(th, params)
        for _ in range(3):
            p, s = lopt.opt_update(th, s, jax.grad(loss)(p), p, loss(p), KEY)
        return loss(p)

    g = jax.jit(jax.grad(meta_loss))(theta)
    norms = [float(jnp.linalg.norm(x)) for x in jax.tree.leaves(g)]
    assert all(np.isfinite(norms)) and max(norms) > 0


def test_config_json_round_trip_and_errors():
    cfg = MLPLOptConfig(hidden_sizes=(8, 4), decays=(0.5, 0.9), step_mult=0.01)
    again = config_from_dict(MLPLOptConfig, json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg
    lopt = learned_opt.make("mlp", {"hidden_sizes": [8], "decays": [0.9]})
    assert lopt.config.num_inputs == 2 + 1 + 11
    theta = lopt.init(KEY)
    assert theta["mlp"]["linear_0"]["w"].shape == (14, 8)
    assert "mlp" in learned_opt.architectures()
    with pytest.raises(learned_opt.LearnedOptError, match="unknown MLPLOptConfig key"):
        learned_opt.make("mlp", {"hidden": 3})
    with pytest.raises(learned_opt.LearnedOptError, match="decays"):
        MLPLOptConfig(decays=(1.5,))
    with pytest.raises(learned_opt.LearnedOptError, match="known"):
        learned_opt.make("no_such_arch")


def test_baselines():
    loss = lambda x: 0.5 * jnp.sum(x ** 2)  # noqa: E731
    x = jnp.array([1.0, -2.0])
    for name in learned_opt.baseline_names():
        tx = learned_opt.make_baseline(name)
        lr = learned_opt.DEFAULT_LEARNING_RATES[name]
        p = x
        state = tx.init(p)
        for _ in range(5):
            u, state = tx.update(jax.grad(loss)(p), state, p)
            p = optax.apply_updates(p, u)
        assert float(loss(p)) < float(loss(x)), name
        assert float(jnp.max(jnp.abs(p - x))) <= 5 * lr * 2 * 5, name  # |g| <= 2, momentum <= 5x
    # first steps against their formulas: sgd -lr*g, adam -lr*sign(g)
    g = jax.grad(loss)(x)
    u, _ = learned_opt.make_baseline("sgd", 0.1).update(g, optax.sgd(0.1).init(x), x)
    np.testing.assert_allclose(u, -0.1 * g, rtol=1e-6)
    tx = learned_opt.make_baseline("momentum", 0.1)   # heavy ball, momentum 0.9 by default
    s = tx.init(x)
    u1, s = tx.update(g, s, x)
    u2, s = tx.update(2 * g, s, x)
    np.testing.assert_allclose(u2, -0.1 * (0.9 * g + 2 * g), rtol=1e-6)
    tx = learned_opt.make_baseline("adam", 0.01)
    u, _ = tx.update(g, tx.init(x), x)
    np.testing.assert_allclose(u, -0.01 * jnp.sign(g), rtol=1e-5)
    tx = learned_opt.make_baseline("lion", 0.01)       # sign of the interpolated momentum + wd 1e-3
    u, _ = tx.update(g, tx.init(x), x)
    np.testing.assert_allclose(u, -0.01 * (jnp.sign(g) + 1e-3 * x), rtol=1e-6)
    with pytest.raises(learned_opt.LearnedOptError, match="known: .*adam"):
        learned_opt.make_baseline("adamax_nope")
    from learned_opt.baselines import LR_GRIDS
    for name in learned_opt.baseline_names():               # half-decade grids, 11 points
        ratios = np.diff(np.log10(LR_GRIDS[name]))
        assert len(LR_GRIDS[name]) == 11 and np.allclose(ratios, 0.5, atol=1e-3), name
    with pytest.raises(learned_opt.LearnedOptError, match="bad options"):
        learned_opt.make_baseline("adam", 1e-3, no_such_option=1)


class _NoisyConfig:
    pass


class _NoisySGD(learned_opt.LearnedOptimizer):
    """A stand-in optimizer that uses its key: p <- p - 0.1 g + noise(key)."""

    architecture = "_test_noisy"
    needs_key = True

    def __init__(self):
        self.config = _NoisyConfig()

    def init(self, key):
        return {}

    def opt_init(self, theta, params, num_steps=None):
        return ()

    def opt_update(self, theta, state, grads, params, loss, key):
        new = jax.tree.map(lambda p, g: p - 0.1 * g + 1e-3 * jax.random.normal(key, p.shape),
                           params, grads)
        return new, state


def test_as_optax_carries_a_key_when_needed():
    tx = learned_opt.as_optax(_NoisySGD(), {}, seed=7)
    p = {"w": jnp.zeros(4)}
    g = {"w": jnp.ones(4)}
    state = tx.init(p)
    assert state.key is not None
    upd = jax.jit(tx.update)
    u1, s1 = upd(g, state, p)
    u2, s2 = upd(g, s1, p)
    assert not np.allclose(u1["w"], u2["w"])              # the key advances every step
    np.testing.assert_allclose(u1["w"], -0.1, atol=1e-2)
    u3, s3 = upd(g, state, p, key=jax.random.PRNGKey(3))  # an explicit key wins
    u4, _ = upd(g, s1, p, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(u3["w"], u4["w"])
    np.testing.assert_array_equal(s3.key, state.key)      # and leaves the carried key alone


def test_dmd_variant_appends_dmd_features():
    from learned_opt import dmd
    on = MLPLOpt(dmd_window=6, dmd_rank=2, output_init_scale=1.0)
    off = MLPLOpt(output_init_scale=1.0)
    assert on.config.num_inputs == 19 + dmd.num_features(2) == 25
    theta_on, theta_off = on.init(KEY), off.init(KEY)
    # the same network on the first 19 inputs; zero weights on the DMD channels -> identical steps
    theta_mask = jax.tree.map(lambda x: x, theta_on)
    theta_mask["mlp"]["linear_0"]["w"] = theta_on["mlp"]["linear_0"]["w"].at[19:].set(0.0).at[:19].set(
        theta_off["mlp"]["linear_0"]["w"])
    for k in ("linear_1", "linear_2"):
        theta_mask["mlp"][k] = theta_off["mlp"][k]
    update_on, update_off = jax.jit(on.opt_update), jax.jit(off.opt_update)
    s_on, s_off = on.opt_init(theta_on, P), off.opt_init(theta_off, P)
    assert s_off.dmd is None and s_on.dmd.snapshots["w"].shape == (3, 2, 6)
    for g in (G1, G2, G1):
        p_on, s_on = update_on(theta_mask, s_on, g, P, 0.0, KEY)
        p_off, s_off = update_off(theta_off, s_off, g, P, 0.0, KEY)
    for k in P:
        np.testing.assert_allclose(p_on[k], p_off[k], rtol=1e-5, atol=1e-7)
    assert int(s_on.dmd.count) == 3
    np.testing.assert_allclose(s_on.dmd.snapshots["w"][..., -1], G1["w"])
    # with weights on the DMD channels the step changes
    p_dmd, _ = update_on(theta_on, s_on, G2, P, 0.0, KEY)
    p_mask, _ = update_on(theta_mask, s_on, G2, P, 0.0, KEY)
    assert not np.allclose(p_dmd["w"], p_mask["w"])
    with pytest.raises(learned_opt.LearnedOptError, match="dmd"):
        MLPLOpt(dmd_window=2)
