"""The coordinatewise LSTM optimizer ("lstm", Andrychowicz et al. 2016) against numpy formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
import learned_opt.lstm_lopt  # noqa: F401  (registers "lstm")
from learned_opt import dmd
from learned_opt.base import LearnedOptError, config_from_dict, config_to_dict
from learned_opt.lstm_lopt import LSTMLOpt, LSTMLOptConfig, preprocess_gradient
from meta_training_helper import quadratic_meta_training

KEY = jax.random.PRNGKey(0)

# matrix, vector (with a zero and a tiny gradient), scalar
P = {"w": np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32),
     "b": np.array([0.1, -0.2, 0.3], np.float32),
     "s": np.array(3.0, np.float32)}
G1 = {"w": np.array([[1.0, -2.0], [0.5, 0.0], [3.0, -1e-3]], np.float32),
      "b": np.array([0.0, 2e-5, -40.0], np.float32),
      "s": np.array(-2.0, np.float32)}
G2 = {"w": np.array([[-0.5, 1.0], [2.0, 1.0], [0.0, 0.5]], np.float32),
      "b": np.array([-1e-6, 0.3, 7.0], np.float32),
      "s": np.array(0.7, np.float32)}
NAMES = ["b", "s", "w"]  # jax.tree.leaves order of a dict

# a net with visible outputs (head scale 1) and few units, for the numpy comparisons
C_SMALL = 1.0
SMALL = LSTMLOpt(hidden_size=5, num_layers=2, output_init_scale=1.0, output_scale=C_SMALL)
SMALL_UPDATE = jax.jit(SMALL.opt_update)
DEFAULT = LSTMLOpt()
DEFAULT_UPDATE = jax.jit(DEFAULT.opt_update)


# ------------------------------------------------------------------ numpy reference
def np_preprocess(g, p=10.0):
    g = np.asarray(g, np.float64)
    out = np.zeros(g.shape + (2,))
    for idx in np.ndindex(g.shape):
        x = g[idx]
        if abs(x) >= math.exp(-p):
            out[idx] = (math.log(abs(x)) / p, np.sign(x))
        else:
            out[idx] = (-1.0, math.exp(p) * x)
    return out


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_lstm_step(theta, x, h, c):
    """Stacked LSTM (gate order i, f, g, o) + linear head on rows x; h, c (L, N, H)."""
    L = len(theta["lstm"])
    h_new, c_new = np.zeros_like(h), np.zeros_like(c)
    for layer in range(L):
        prm = {k: np.asarray(v, np.float64) for k, v in theta["lstm"][f"layer_{layer}"].items()}
        z = x @ prm["wx"] + h[layer] @ prm["wh"] + prm["b"]
        H = h.shape[-1]
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c_new[layer] = sigmoid(f) * c[layer] + sigmoid(i) * np.tanh(g)
        h_new[layer] = sigmoid(o) * np.tanh(c_new[layer])
        x = h_new[layer]
    head = {k: np.asarray(v, np.float64) for k, v in theta["head"].items()}
    out = x @ head["w"] + head["b"]
    return out[:, 0], h_new, c_new


def flat(tree):
    return np.concatenate([np.reshape(np.asarray(tree[k], np.float64), -1) for k in NAMES])


def unflat(vec):
    out, start = {}, 0
    for k in NAMES:
        n = np.size(P[k])
        out[k] = vec[start:start + n].reshape(np.shape(P[k]))
        start += n
    return out


# ------------------------------------------------------------------ tests
def test_preprocessing_equals_formula_on_both_branches():
    e10 = math.exp(-10.0)
    g = np.array([0.0, 1e-30, -1e-30, 1e-6, -3e-5, 0.9 * e10, 1.1 * e10, -1.1 * e10, 1e-3,
                  1.0, -2.5, 7.0, 1e8, -1e30, 3e38], np.float32)
    got = jax.jit(preprocess_gradient, static_argnums=1)(g, 10.0)
    assert got.shape == (15, 2) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_preprocess(g), rtol=1e-6, atol=1e-7)
    small = np.abs(g.astype(np.float64)) < e10
    assert small.sum() == 6 and (~small).sum() == 9   # both branches exercised
    np.testing.assert_array_equal(np.asarray(got)[small, 0], -1.0)
    np.testing.assert_array_equal(np.asarray(got)[~small, 1], np.sign(g[~small]))
    # another p, other shapes (matrix in, matrix + (2,) out)
    m = g[:12].reshape(3, 4)
    np.testing.assert_allclose(preprocess_gradient(m, 3.0), np_preprocess(m, 3.0), rtol=1e-6,
                               atol=1e-6)
    # gradients of both channels are finite and equal the derivative of the formula:
    # d/dg log|g|/p = 1/(p g) on the large branch, d/dg e^p g = e^p on the small one
    for ch in (0, 1):
        dg = jax.jit(jax.grad(lambda x: jnp.sum(preprocess_gradient(x, 10.0)[..., ch])))(g)
        assert np.all(np.isfinite(np.asarray(dg)))
        g64 = g.astype(np.float64)
        with np.errstate(divide="ignore", over="ignore"):
            want = (np.where(small, 0.0, 1.0 / (10.0 * g64)) if ch == 0
                    else np.where(small, math.exp(10.0), 0.0))
        np.testing.assert_allclose(dg, want, rtol=1e-5, atol=1e-30)  # 3e38 -> denormal 3e-40


def test_two_updates_equal_numpy_lstm():
    theta = SMALL.init(KEY)
    state = SMALL.opt_init(theta, P)
    N = 6 + 3 + 1
    assert state.h.shape == state.c.shape == (2, N, 5) and state.dmd is None
    assert state.iteration.dtype == jnp.int32 and int(state.iteration) == 0
    h = np.zeros((2, N, 5))
    c = np.zeros((2, N, 5))
    params, np_params = P, {k: np.asarray(v, np.float64) for k, v in P.items()}
    for t, grads in enumerate((G1, G2)):
        params, state = SMALL_UPDATE(theta, state, grads, params, jnp.float32(1.0), KEY)
        out, h, c = np_lstm_step(theta, np_preprocess(flat(grads)), h, c)
        np_params = {k: np_params[k] - C_SMALL * v for k, v in unflat(out).items()}
        assert int(state.iteration) == t + 1
        np.testing.assert_allclose(state.h, h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.c, c, rtol=1e-5, atol=1e-6)
        for k in NAMES:
            assert params[k].shape == P[k].shape and params[k].dtype == jnp.float32
            np.testing.assert_allclose(params[k], np_params[k], rtol=1e-5, atol=1e-6)
    assert np.abs(flat(params) - flat(P)).max() > 1e-2          # the steps are not negligible
    # the second step depends on the first through the recurrent state
    p_fresh, _ = SMALL_UPDATE(theta, SMALL.opt_init(theta, P), G2, P, jnp.float32(1.0), KEY)
    p_after, _ = SMALL_UPDATE(theta, SMALL_UPDATE(theta, SMALL.opt_init(theta, P), G1, P,
                                                  jnp.float32(1.0), KEY)[1],
                              G2, P, jnp.float32(1.0), KEY)
    assert not np.allclose(p_fresh["w"], p_after["w"])


def test_untrained_steps_are_tiny_and_keep_dtype():
    theta = DEFAULT.init(KEY)
    params = {"k": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 2, 2),
              "h": jnp.ones((4,), jnp.bfloat16), "s": np.float32(0.5)}
    grads = {"k": np.geomspace(1e-8, 1e4, 24).astype(np.float32).reshape(2, 3, 2, 2),
             "h": -3.0 * jnp.ones((4,), jnp.bfloat16), "s": np.float32(0.0)}
    new, state = jax.jit(DEFAULT.opt_update)(theta, DEFAULT.opt_init(theta, params), grads,
                                             params, jnp.float32(0.0), KEY)
    assert state.h.shape == (2, 24 + 4 + 1, 20)
    assert new["h"].dtype == jnp.bfloat16 and new["k"].dtype == jnp.float32
    step = np.abs(np.asarray(new["k"]) - params["k"])
    # |out| <= sum |w_head| ~ 20 * 0.01 / sqrt(20) * 0.8 ~ 0.04; times output_scale 0.1
    assert 0 < step.max() < 5e-3, step.max()
    assert abs(float(new["s"]) - 0.5) < 5e-3


def sign_descent_theta(lopt, sign=1.0):
    """A hand-made theta whose LSTM outputs ~ sign(g): every layer copies its input
    channel 1 (sign(g) on the large branch) into the cell and forgets the past."""
    theta = jax.tree.map(np.zeros_like, jax.device_get(lopt.init(KEY)))
    H = lopt.config.hidden_size
    for layer, prm in theta["lstm"].items():
        b = prm["b"]
        b[:H], b[H:2 * H], b[3 * H:] = 10.0, -10.0, 10.0    # input and output open, no memory
        row = 1 if layer == "layer_0" else 0                # sign channel / first unit
        prm["wx"][row, 2 * H] = 5.0                         # unit 0 cell input
    theta["head"]["w"][0, 0] = sign / np.tanh(np.tanh(5.0 * np.tanh(np.tanh(5.0))))
    return theta


def test_as_optax_and_hand_made_sign_descent():
    """Through optax, a sign-descent theta solves a quadratic and its negation diverges;
    the optax updates reproduce opt_update."""
    lopt = LSTMLOpt(hidden_size=4, num_layers=2, output_scale=0.01)
    target = {"w": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "s": np.float32(-1.0)}

    def loss(p):
        return sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)

    params = jax.tree.map(np.zeros_like, target)

    @jax.jit
    @jax.vmap
    def train(theta):
        tx = learned_opt.as_optax(lopt, theta)

        def step(carry, _):
            p, st = carry
            value, grads = jax.value_and_grad(loss)(p)
            u, st = tx.update(grads, st, p, value=value)
            return (optax.apply_updates(p, u), st), u

        (p, st), us = jax.lax.scan(step, (params, tx.init(params)), None, length=400)
        assert st.key is None
        return jax.tree.map(lambda u: u[0], us), loss(p), st.opt_state.iteration

    thetas = [sign_descent_theta(lopt), sign_descent_theta(lopt, -1.0)]
    first, final, iters = train(jax.tree.map(lambda *a: np.stack(a), *thetas))
    l0 = float(loss(params))
    np.testing.assert_array_equal(iters, 400)
    # the first step is -0.01 * sign(g) (up to saturation of the sigmoids)
    g0 = jax.grad(loss)(params)
    for k in params:
        np.testing.assert_allclose(first[k][0], -0.01 * np.sign(g0[k]), rtol=2e-3)
    assert float(final[0]) < 1e-3 * l0, (l0, final)
    assert float(final[1]) > 2 * l0
    # optax updates == opt_update for a random theta
    theta = SMALL.init(KEY)
    tx = SMALL.as_optax(theta)
    u, _ = jax.jit(tx.update)(G1, tx.init(P), P, value=jnp.float32(2.0))
    want, _ = SMALL_UPDATE(theta, SMALL.opt_init(theta, P), G1, P, jnp.float32(2.0), KEY)
    got = optax.apply_updates(P, u)
    for k in P:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_vmap_over_thetas_and_params():
    thetas = jax.device_get(jax.vmap(SMALL.init)(jax.random.split(KEY, 3)))
    ps = jax.tree.map(lambda a, b: np.stack([a, 3 * b + 1]), P, G2)
    gs = jax.tree.map(lambda a, b: np.stack([a, b]), G1, G2)
    states = jax.vmap(lambda p: SMALL.opt_init(None, p))(ps)
    per_params = jax.vmap(SMALL.opt_update, in_axes=(None, 0, 0, 0, None, None))
    out, new_states = jax.jit(jax.vmap(per_params, in_axes=(0, None, None, None, None, None)))(
        thetas, states, gs, ps, jnp.float32(0.0), KEY)
    assert new_states.h.shape == (3, 2, 2, 10, 5)
    for i in range(3):
        th = jax.tree.map(lambda a: a[i], thetas)
        for b in range(2):
            pb, gb = jax.tree.map(lambda a: a[b], ps), jax.tree.map(lambda a: a[b], gs)
            single, sst = SMALL_UPDATE(th, SMALL.opt_init(th, pb), gb, pb, jnp.float32(0.0), KEY)
            np.testing.assert_allclose(new_states.c[i, b], sst.c, rtol=1e-5, atol=1e-6)
            for k in P:
                np.testing.assert_allclose(out[k][i, b], single[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["w"][0, 0], out["w"][1, 0])   # thetas differ
    assert not np.allclose(out["w"][0, 0], out["w"][0, 1])   # gradients differ


def test_config_validation_registry_and_edge_cases():
    cfg = LSTMLOptConfig(hidden_size=7, num_layers=3, output_scale=0.05)
    assert config_from_dict(LSTMLOptConfig, config_to_dict(cfg)) == cfg
    lopt = learned_opt.make("lstm", {"hidden_size": 7, "num_layers": 3, "output_scale": 0.05})
    assert isinstance(lopt, LSTMLOpt) and lopt.config == cfg and lopt.config.num_inputs == 2
    assert not lopt.needs_key and "lstm" in learned_opt.architectures()
    theta = lopt.init(KEY)
    assert sorted(theta["lstm"]) == ["layer_0", "layer_1", "layer_2"]
    assert theta["lstm"]["layer_0"]["wx"].shape == (2, 28)
    assert theta["lstm"]["layer_2"]["wx"].shape == (7, 28) and theta["head"]["w"].shape == (7, 1)
    np.testing.assert_array_equal(theta["lstm"]["layer_1"]["b"][7:14], 1.0)  # forget bias
    for bad in ({"hidden_size": 0}, {"hidden_size": 2.5}, {"num_layers": 0},
                {"num_layers": True}, {"preprocess_p": 0.0}, {"preprocess_p": 100.0},
                {"preprocess_p": float("nan")}, {"output_scale": 0.0}, {"output_scale": -0.1},
                {"output_init_scale": -1.0}, {"forget_bias": float("inf")},
                {"dmd_window": 2}, {"dmd_window": 4, "dmd_rank": 4}, {"dmd_window": -1},
                {"nonsense": 1}):
        with pytest.raises(LearnedOptError):
            learned_opt.make("lstm", bad)
    # an empty parameter tree just counts the step
    p, s = lopt.opt_update(theta, lopt.opt_init(theta, {}), {}, {}, 0.0, KEY)
    assert p == {} and int(s.iteration) == 1 and s.h.shape == (3, 0, 7)


def test_dmd_variant():
    on = LSTMLOpt(hidden_size=5, output_init_scale=1.0, output_scale=C_SMALL, dmd_window=4,
                  dmd_rank=2)
    assert on.config.num_inputs == 2 + dmd.num_features(2) == 8
    theta_off = SMALL.init(KEY)
    theta_on = jax.device_get(on.init(KEY))
    assert theta_on["lstm"]["layer_0"]["wx"].shape == (8, 20)
    # zero weights on the DMD channels, everything else as theta_off -> exactly DMD off
    theta_mask = jax.tree.map(np.array, jax.device_get(theta_off))
    theta_mask["lstm"]["layer_0"]["wx"] = np.concatenate(
        [theta_mask["lstm"]["layer_0"]["wx"], np.zeros((6, 20), np.float32)])
    update_on = jax.jit(on.opt_update)
    s_on, s_off = on.opt_init(theta_mask, P), SMALL.opt_init(theta_off, P)
    assert s_off.dmd is None and s_on.dmd.snapshots["w"].shape == (3, 2, 4)
    p_on, p_off = P, P
    for g in (G1, G2, G1):
        p_on, s_on = update_on(theta_mask, s_on, g, p_on, jnp.float32(0.0), KEY)
        p_off, s_off = SMALL_UPDATE(theta_off, s_off, g, p_off, jnp.float32(0.0), KEY)
        for k in P:
            np.testing.assert_allclose(p_on[k], p_off[k], rtol=1e-5, atol=1e-7)
    assert int(s_on.dmd.count) == 3
    np.testing.assert_allclose(s_on.dmd.snapshots["w"][..., -1], G1["w"])
    # nonzero DMD weights change the step
    theta_dmd = jax.tree.map(np.array, theta_mask)
    theta_dmd["lstm"]["layer_0"]["wx"][2:] = theta_on["lstm"]["layer_0"]["wx"][2:]
    p_dmd, _ = update_on(theta_dmd, s_on, G2, P, jnp.float32(0.0), KEY)
    p_mask, _ = update_on(theta_mask, s_on, G2, P, jnp.float32(0.0), KEY)
    assert not np.allclose(p_dmd["w"], p_mask["w"])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(p_dmd))


def test_meta_training_lowers_quadratic_meta_loss():
    before, after, state = quadratic_meta_training("lstm", 100)
    # Measured here (default config, output_scale 0.1): 1.034 -> 0.224 after 100 outer steps
    # (seed 1: 1.016 -> 0.388; 300 steps: 1.034 -> 0.150). We require a drop of at least 0.4.
    assert np.isfinite(after) and after < before - 0.4, (before, after)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.theta))
