"""The Adafactor-MLP learned optimizer against an independent numpy implementation of its
39 features and step, its meta-learned decays, optax adapter, vmap, DMD and meta-training."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
import learned_opt.adafactor_lopt  # noqa: F401  (registers "adafactor_mlp")
from learned_opt.adafactor_lopt import AdafactorLOpt, AdafactorLOptConfig
from meta_training_helper import quadratic_meta_training

SCALES = np.array([1, 3, 10, 30, 100, 300, 1000, 3000, 1e4, 3e4, 1e5])
DEFAULT = dict(dm=np.array([0.9, 0.99, 0.999]), dv=np.array([0.999]),
               df=np.array([0.9, 0.99, 0.999]))
KEY = jax.random.PRNGKey(0)


def _kernel(scale, shift):
    x = np.arange(24, dtype=np.float64).reshape(2, 2, 3, 2)
    return (scale * np.sin(1.3 * x + shift)).astype(np.float32)


P = {"w": np.array([[0.5, -1.0, 0.3], [2.0, 0.25, -0.4]], np.float32),
     "k": _kernel(0.8, 0.1),                       # 4-D conv kernel (H, W, in, out)
     "b": np.array([0.1, -0.2], np.float32),
     "s": np.array(3.0, np.float32)}
G1 = {"w": np.array([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]], np.float32),
      "k": _kernel(1.5, 0.7),
      "b": np.array([-0.3, 0.6], np.float32),
      "s": np.array(-2.0, np.float32)}
G2 = {"w": np.array([[-0.5, 1.0, 0.7], [2.0, 1.0, -1.5]], np.float32),
      "k": _kernel(0.4, 2.0),
      "b": np.array([0.2, 0.4], np.float32),
      "s": np.array(0.7, np.float32)}

LOPT = AdafactorLOpt()
UPDATE = jax.jit(LOPT.opt_update)
FEATURES = jax.jit(LOPT.features)
LOPT1 = AdafactorLOpt(output_init_scale=1.0)   # untrained steps of O(step_mult): visible
UPDATE1 = jax.jit(LOPT1.opt_update)


def np_adafactor(gs, p, dm, dv, df):
    """Accumulators after the gradients ``gs`` and the 39 inputs at the last one (numpy, float64).

    Returns ``(inputs, (m, v, row, col, fac_m))``; factored quantities of >=2-D tensors are
    written with explicit loops over elements (no broadcasting tricks)."""
    p = p.astype(np.float64)
    k = len(dm)
    factored = p.ndim >= 2
    m = np.zeros(p.shape + (k,))
    v = np.zeros(p.shape + (1,))
    fm = np.zeros(p.shape + (k,))
    if factored:
        r = np.zeros(p.shape[:-1] + (k,))
        c = np.zeros(p.shape[:-2] + p.shape[-1:] + (k,))
    else:
        r, c = np.zeros(p.shape + (k,)), None
    for g in gs:
        g = g.astype(np.float64)
        m = dm * m + (1 - dm) * g[..., None]
        v = dv * v + (1 - dv) * g[..., None] ** 2
        a = g ** 2 + 1e-30
        if factored:
            r = df * r + (1 - df) * a.mean(axis=-1)[..., None]
            c = df * c + (1 - df) * a.mean(axis=-2)[..., None]
            vhat, rb, cb = (np.zeros(p.shape + (k,)) for _ in range(3))
            for idx in np.ndindex(*p.shape):
                lead, i, j = idx[:-2], idx[-2], idx[-1]
                rb[idx] = r[lead + (i,)]
                cb[idx] = c[lead + (j,)]
                vhat[idx] = r[lead + (i,)] * c[lead + (j,)] / r[lead].mean(axis=0)
        else:
            r = df * r + (1 - df) * a[..., None]
            vhat = rb = cb = r
        u = g[..., None] / np.sqrt(vhat + 1e-9)
        fm = dm * fm + (1 - dm) * u
    rs = 1 / np.sqrt(v + 1e-6)
    raw = np.concatenate([g[..., None], p[..., None], m, v, m * rs, rs, u, rb, cb,
                          1 / np.sqrt(rb + 1e-8), 1 / np.sqrt(cb + 1e-8), fm], axis=-1)
    assert raw.shape[-1] == 28
    axes = tuple(range(p.ndim))
    norm = raw / np.sqrt(1e-5 + np.mean(raw ** 2, axis=axes, keepdims=True))
    t = len(gs) - 1
    tf = np.broadcast_to(np.tanh(t / SCALES - 1.0), p.shape + (11,))
    return np.concatenate([norm, tf], axis=-1), (m, v, r, c, fm)


def np_mlp(theta, x):
    layers = [theta["mlp"][f"linear_{i}"] for i in range(len(theta["mlp"]))]
    for i, layer in enumerate(layers):
        x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x[..., 0], x[..., 1]


def check_features(theta, decays):
    """One update with G1, then the features at G2 against numpy; returns the new state."""
    state = LOPT.opt_init(theta, P)
    _, state = UPDATE(theta, state, G1, P, jnp.float32(1.0), KEY)
    assert int(state.iteration) == 1
    inputs, new_state = FEATURES(theta, state, G2, P)
    assert int(new_state.iteration) == 2
    for name in P:
        want, (m, v, r, c, fm) = np_adafactor([G1[name], G2[name]], P[name], **decays)
        assert inputs[name].shape == P[name].shape + (39,)
        np.testing.assert_allclose(new_state.momenta[name], m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(new_state.rms[name], v, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(new_state.row[name], r, rtol=1e-5, atol=1e-9)
        if c is None:
            assert new_state.col[name].shape == (0,)
        else:
            np.testing.assert_allclose(new_state.col[name], c, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(new_state.fac_momenta[name], fm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(inputs[name], want, rtol=2e-5, atol=2e-6)
    return new_state


def test_39_features_equal_numpy_after_two_updates():
    theta = LOPT.init(KEY)
    state = check_features(theta, DEFAULT)
    # the shapes the factoring promises: rows of the last-two-axes matrices, columns, full vectors
    assert state.row["w"].shape == (2, 3) and state.col["w"].shape == (3, 3)
    assert state.row["k"].shape == (2, 2, 3, 3) and state.col["k"].shape == (2, 2, 2, 3)
    assert state.row["b"].shape == (2, 3) and state.row["s"].shape == (3,)
    # the row accumulator of the matrix holds means over columns of g^2
    a1, a2 = G1["w"].astype(np.float64) ** 2, G2["w"].astype(np.float64) ** 2
    df = DEFAULT["df"]
    np.testing.assert_allclose(state.row["w"][1], df * (1 - df) * a1[1].mean() + (1 - df) * a2[1].mean(),
                               rtol=1e-5)


def test_decays_come_from_theta():
    theta = LOPT.init(KEY)
    np.testing.assert_allclose(theta["log_one_minus_momentum_decays"], np.log([0.1, 0.01, 0.001]),
                               rtol=1e-6)
    decays = dict(dm=np.array([0.5, 0.8, 0.0]),          # 0.0: x = log(1) = 0
                  dv=np.array([0.99999]),                # x = -50 clips to max_decay
                  df=np.array([0.3, 0.6, 0.95]))
    theta2 = dict(theta, log_one_minus_momentum_decays=jnp.log(jnp.array([0.5, 0.2, 1.0])),
                  log_one_minus_rms_decay=jnp.array([-50.0]),
                  log_one_minus_adafactor_decays=jnp.log(jnp.array([0.7, 0.4, 0.05])))
    state = check_features(theta2, decays)
    # closed form after two updates: m = b (1-b) g1 + (1-b) g2; with b = 0 it is g2
    dm = decays["dm"]
    for name in P:
        want = dm * (1 - dm) * G1[name][..., None] + (1 - dm) * G2[name][..., None]
        np.testing.assert_allclose(state.momenta[name], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.momenta[name][..., 2], G2[name], rtol=1e-6)
    np.testing.assert_allclose(state.rms["s"], 1e-5 * (0.99999 * 4.0 + 0.49), rtol=1e-4)
    # the default theta gives different accumulators
    default = check_features(theta, DEFAULT)
    assert not np.allclose(default.momenta["w"], state.momenta["w"])
    assert not np.allclose(default.row["k"], state.row["k"])
    d = LOPT.decays(theta2)
    np.testing.assert_allclose(d.rms.decay, [0.99999], rtol=1e-7)
    np.testing.assert_allclose(d.rms.one_minus, [1e-5], rtol=1e-5)


def test_step_equals_numpy_mlp():
    lopt = AdafactorLOpt(step_mult=0.1, exp_mult=0.5, output_init_scale=1.0)
    theta = lopt.init(jax.random.PRNGKey(3))
    update = jax.jit(lopt.opt_update)
    _, state = update(theta, lopt.opt_init(theta, P), G1, P, 0.0, KEY)
    new_p, _ = update(theta, state, G2, P, jnp.float32(0.0), KEY)
    for name in P:
        x, _ = np_adafactor([G1[name], G2[name]], P[name], **DEFAULT)
        d, m = np_mlp(theta, x)
        assert np.abs(0.5 * m).max() > 0.05  # the exp term is exercised
        np.testing.assert_allclose(new_p[name], P[name] - 0.1 * d * np.exp(0.5 * m),
                                   rtol=1e-4, atol=1e-5)
        assert new_p[name].dtype == P[name].dtype


def test_untrained_steps_are_tiny():
    theta = LOPT.init(KEY)
    new_p, _ = UPDATE(theta, LOPT.opt_init(theta, P), G1, P, 0.0, KEY)
    step = max(float(np.abs(new_p[k] - P[k]).max()) for k in P)
    assert 0 < step < 1e-4   # step_mult (1e-3) * output_init_scale (1e-2) * O(1)


def test_meta_parameter_count_and_config():
    theta = LOPT.init(KEY)
    assert LOPT.config.num_inputs == 39 and LOPT.config.num_normalised == 28
    shapes = jax.tree.map(jnp.shape, theta)
    assert shapes["mlp"]["linear_0"]["w"] == (39, 4) and shapes["mlp"]["linear_2"]["w"] == (4, 2)
    assert shapes["log_one_minus_momentum_decays"] == (3,)
    assert shapes["log_one_minus_rms_decay"] == (1,)
    assert shapes["log_one_minus_adafactor_decays"] == (3,)
    # 39*4+4 + 4*4+4 + 4*2+2 = 190 MLP numbers + 7 decays
    assert sum(x.size for x in jax.tree.leaves(theta)) == 197
    two = learned_opt.make("adafactor_mlp", {"momentum_decays": [0.5, 0.9],
                                             "adafactor_decays": [0.9, 0.99], "hidden_sizes": [8]})
    assert two.config.num_inputs == 4 + 8 * 2 + 11
    assert "adafactor_mlp" in learned_opt.architectures()
    with pytest.raises(learned_opt.LearnedOptError, match="same length"):
        AdafactorLOptConfig(momentum_decays=(0.9,))
    with pytest.raises(learned_opt.LearnedOptError, match="rms_decay"):
        AdafactorLOptConfig(rms_decay=1.0)
    with pytest.raises(learned_opt.LearnedOptError, match="unknown AdafactorLOptConfig key"):
        learned_opt.make("adafactor_mlp", {"decays": [0.9]})


def descent_theta(lopt, channel, sign=1.0):
    """theta whose output is d = sign * (normalised input ``channel``), m = 0."""
    theta = jax.tree.map(jnp.zeros_like, lopt.init(KEY))
    theta.update({k: v for k, v in lopt.init(KEY).items() if k != "mlp"})
    mlp = theta["mlp"]
    mlp["linear_0"]["w"] = mlp["linear_0"]["w"].at[channel, 0].set(1.0).at[channel, 1].set(-1.0)
    mlp["linear_1"]["w"] = mlp["linear_1"]["w"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    mlp["linear_2"]["w"] = mlp["linear_2"]["w"].at[0, 0].set(sign).at[1, 0].set(-sign)
    return theta


def test_as_optax_trains_with_factored_momentum():
    kx, kw = jax.random.split(jax.random.PRNGKey(42))
    x = jax.random.normal(kx, (64, 5))
    w_true = jax.random.normal(kw, (5, 2))
    y = x @ w_true + 0.5

    def loss(p):
        return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    params = {"w": jnp.zeros((5, 2)), "b": jnp.zeros(2)}
    lopt = AdafactorLOpt(step_mult=0.02)

    def run(theta, steps):
        tx = learned_opt.as_optax(lopt, theta)

        def body(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p)
            u, s = tx.update(grads, s, p, value=value)
            return (optax.apply_updates(p, u), s), None

        (p, s), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
        return p, s

    run = jax.jit(run, static_argnums=1)
    l0 = float(loss(params))
    final, s = run(descent_theta(lopt, channel=25), 300)   # channel 25: factored momentum, 0.9
    assert float(loss(final)) < 0.01 * l0, (l0, float(loss(final)))
    assert s.key is None and int(s.opt_state.iteration) == 300
    worse, _ = run(descent_theta(lopt, channel=25, sign=-1.0), 50)
    assert float(loss(worse)) > 2 * l0
    # the optax updates equal the optimizer's own step
    theta = LOPT.init(KEY)
    tx = LOPT.as_optax(theta)
    updates, _ = jax.jit(tx.update)(G1, tx.init(P), P)
    want, _ = UPDATE(theta, LOPT.opt_init(theta, P), G1, P, 0.0, KEY)
    for k in P:
        np.testing.assert_allclose(optax.apply_updates(P, updates)[k], want[k], rtol=1e-6, atol=1e-7)


def test_vmap_over_thetas_and_params():
    lopt, update = LOPT1, UPDATE1
    thetas = jax.vmap(lopt.init)(jax.random.split(KEY, 3))
    # different decays per member: they must be used per member under vmap
    thetas["log_one_minus_momentum_decays"] = jnp.log(jnp.array(
        [[0.1, 0.01, 0.001], [0.5, 0.5, 0.5], [0.9, 0.2, 0.05]]))
    update = jax.jit(lopt.opt_update)

    def two_steps(th):
        p, s = lopt.opt_update(th, lopt.opt_init(th, P), G1, P, 0.0, KEY)
        return lopt.opt_update(th, s, G2, p, 0.0, KEY)

    batched_p, batched_s = jax.jit(jax.vmap(two_steps))(thetas)
    for i in range(3):
        th = jax.tree.map(lambda a: a[i], thetas)
        p, s = update(th, lopt.opt_init(th, P), G1, P, 0.0, KEY)
        p, s = update(th, s, G2, p, 0.0, KEY)
        for k in P:
            np.testing.assert_allclose(batched_p[k][i], p[k], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(batched_s.fac_momenta[k][i], s.fac_momenta[k], rtol=1e-5,
                                       atol=1e-6)
    assert not np.allclose(batched_s.momenta["w"][0], batched_s.momenta["w"][1])

    # a batch of parameter sets with one theta (per-member factoring and normalisation)
    theta = jax.tree.map(lambda a: a[0], thetas)
    ps = jax.tree.map(lambda a, b: jnp.stack([a, 3 * b]), P, G2)
    gs = jax.tree.map(lambda a, b: jnp.stack([a, b]), G1, G2)
    states = jax.vmap(lambda p: lopt.opt_init(theta, p))(ps)
    out, new_states = jax.jit(jax.vmap(lopt.opt_update, in_axes=(None, 0, 0, 0, None, None)))(
        theta, states, gs, ps, 0.0, KEY)
    assert new_states.col["k"].shape == (2, 2, 2, 2, 3)
    for i in range(2):
        pi, gi = jax.tree.map(lambda a: a[i], ps), jax.tree.map(lambda a: a[i], gs)
        single, _ = update(theta, lopt.opt_init(theta, pi), gi, pi, 0.0, KEY)
        for k in P:
            np.testing.assert_allclose(out[k][i], single[k], rtol=1e-5, atol=1e-7)


def test_meta_gradient_reaches_decays():
    lopt = LOPT1
    theta = lopt.init(KEY)
    sub = lambda t: {k: t[k] for k in ("w", "s")}  # noqa: E731  (a matrix and a scalar)

    def meta_loss(th):
        p, s = sub(P), lopt.opt_init(th, sub(P))
        for g in (G1, G2):
            p, s = lopt.opt_update(th, s, sub(g), p, 0.0, KEY)
        return sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))

    g = jax.jit(jax.grad(meta_loss))(theta)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    for name in ("log_one_minus_momentum_decays", "log_one_minus_rms_decay",
                 "log_one_minus_adafactor_decays"):
        assert float(jnp.abs(g[name]).max()) > 0, name


def test_dmd_variant_appends_dmd_features():
    from learned_opt import dmd
    on = AdafactorLOpt(dmd_window=6, dmd_rank=2, output_init_scale=1.0)
    off = LOPT1
    assert on.config.num_inputs == 39 + dmd.num_features(2) == 45
    theta_on, theta_off = on.init(KEY), off.init(KEY)
    assert theta_on["mlp"]["linear_0"]["w"].shape == (45, 4)
    # same network on the first 39 inputs, zero weights on the DMD channels -> identical steps
    theta_mask = jax.tree.map(lambda x: x, theta_off)
    theta_mask["mlp"] = dict(theta_off["mlp"])
    theta_mask["mlp"]["linear_0"] = dict(
        theta_off["mlp"]["linear_0"],
        w=theta_on["mlp"]["linear_0"]["w"].at[39:].set(0.0).at[:39].set(
            theta_off["mlp"]["linear_0"]["w"]))
    update_on, update_off = jax.jit(on.opt_update), UPDATE1
    s_on, s_off = on.opt_init(theta_on, P), off.opt_init(theta_off, P)
    assert s_off.dmd is None and s_on.dmd.snapshots["w"].shape == (2, 3, 6)
    for g in (G1, G2, G1):
        p_on, s_on = update_on(theta_mask, s_on, g, P, 0.0, KEY)
        p_off, s_off = update_off(theta_off, s_off, g, P, 0.0, KEY)
    for k in P:
        np.testing.assert_allclose(p_on[k], p_off[k], rtol=1e-5, atol=1e-7)
    assert int(s_on.dmd.count) == 3
    np.testing.assert_allclose(s_on.dmd.snapshots["k"][..., -1], G1["k"])
    p_dmd, _ = update_on(theta_on, s_on, G2, P, 0.0, KEY)
    p_mask, _ = update_on(theta_mask, s_on, G2, P, 0.0, KEY)
    assert not np.allclose(p_dmd["w"], p_mask["w"])
    with pytest.raises(learned_opt.LearnedOptError, match="dmd"):
        AdafactorLOpt(dmd_window=2)


def test_meta_training_lowers_quadratic_meta_loss():
    before, after, state = quadratic_meta_training("adafactor_mlp", 300)
    # Measured here (seed 0, 300 outer steps): 1.0175 -> 0.8896; we require a drop of 0.06.
    assert after < before - 0.06, (before, after)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.theta))
    # the decays moved (they are meta-learned)
    assert not np.allclose(state.theta["log_one_minus_momentum_decays"],
                           np.log([0.1, 0.01, 0.001]), atol=1e-3)
