"""The coordinatewise LSTM optimizer ("lstm", Andrychowicz et al. 2016) against numpy formulas.
The contract it shares with every architecture (optax, vmap, DMD, configs, checkpoints, meta-
training, ...) is tests/test_architectures.py."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt.base import LearnedOptError
from learned_opt.lstm import LSTM, LSTMConfig, preprocess_gradient
from oracles import G1 as _G1, G2 as _G2, KEY, P as _P, np_lstm_cell, quadratic_to_target, \
    sign_descent_theta

# the shared matrix (with a tiny gradient), a 3-vector (with a zero and a tiny gradient), the scalar
P = dict(_P, b=np.array([0.1, -0.2, 0.3], np.float32))
G1 = dict(_G1, w=np.array([[1.0, -2.0], [0.5, 0.0], [3.0, -1e-3]], np.float32),
          b=np.array([0.0, 2e-5, -40.0], np.float32))
G2 = dict(_G2, b=np.array([-1e-6, 0.3, 7.0], np.float32))
NAMES = ["b", "s", "w"]  # jax.tree.leaves order of a dict

# a net with visible outputs (head scale 1) and few units, for the numpy comparisons
C_SMALL = 1.0
SMALL = LSTM(hidden_size=5, num_layers=2, output_init_scale=1.0, output_scale=C_SMALL)
SMALL_UPDATE = jax.jit(SMALL.opt_update)
DEFAULT = LSTM()


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


def np_lstm_step(theta, x, h, c):
    """Stacked LSTM (gate order i, f, g, o) + linear head on rows x; h, c (L, N, H)."""
    L = len(theta["lstm"])
    h_new, c_new = np.zeros_like(h), np.zeros_like(c)
    for layer in range(L):
        h_new[layer], c_new[layer] = np_lstm_cell(theta["lstm"][f"layer_{layer}"], x, h[layer],
                                                  c[layer])
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


def test_state_has_one_row_per_coordinate():
    theta = DEFAULT.init(KEY)
    params = {"k": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 2, 2),
              "h": jnp.ones((4,), jnp.bfloat16), "s": np.float32(0.5)}
    grads = {"k": np.geomspace(1e-8, 1e4, 24).astype(np.float32).reshape(2, 3, 2, 2),
             "h": -3.0 * jnp.ones((4,), jnp.bfloat16), "s": np.float32(0.0)}
    _, state = jax.jit(DEFAULT.opt_update)(theta, DEFAULT.opt_init(theta, params), grads,
                                           params, jnp.float32(0.0), KEY)
    assert state.h.shape == (2, 24 + 4 + 1, 20)


def test_sign_descent_theta_steps_by_the_sign_of_the_gradient():
    """The hand-made theta of the contract's optax training test: its first step is
    -0.01 * sign(g) (up to saturation of the sigmoids)."""
    lopt = LSTM(hidden_size=4, num_layers=2, output_scale=0.01)
    loss, params = quadratic_to_target()
    tx = lopt.as_optax(sign_descent_theta(lopt))
    g0 = jax.grad(loss)(params)
    first, _ = jax.jit(tx.update)(g0, tx.init(params), params, value=loss(params))
    for k in params:
        np.testing.assert_allclose(first[k], -0.01 * np.sign(g0[k]), rtol=2e-3)


def test_theta_shapes_config_errors_and_empty_tree():
    lopt = learned_opt.make("lstm", {"hidden_size": 7, "num_layers": 3, "output_scale": 0.05})
    assert lopt.config == LSTMConfig(hidden_size=7, num_layers=3, output_scale=0.05)
    assert lopt.config.num_inputs == 2
    theta = lopt.init(KEY)
    assert sorted(theta["lstm"]) == ["layer_0", "layer_1", "layer_2"]
    assert theta["lstm"]["layer_0"]["wx"].shape == (2, 28)
    assert theta["lstm"]["layer_2"]["wx"].shape == (7, 28) and theta["head"]["w"].shape == (7, 1)
    np.testing.assert_array_equal(theta["lstm"]["layer_1"]["b"][7:14], 1.0)  # forget bias
    for bad in ({"hidden_size": 0}, {"hidden_size": 2.5}, {"num_layers": 0},
                {"num_layers": True}, {"preprocess_p": 0.0}, {"preprocess_p": 100.0},
                {"preprocess_p": float("nan")}, {"output_scale": 0.0}, {"output_scale": -0.1},
                {"output_init_scale": -1.0}, {"forget_bias": float("inf")}):
        with pytest.raises(LearnedOptError, match=next(iter(bad))):
            learned_opt.make("lstm", bad)
    # an empty parameter tree just counts the step (tests/test_architectures.py), no rows
    _, s = lopt.opt_update(theta, lopt.opt_init(theta, {}), {}, {}, 0.0, KEY)
    assert s.h.shape == (3, 0, 7)
