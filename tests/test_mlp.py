"""The LOLv2 MLP learned optimizer ("mlp") against its formulas. The contract it shares with
every architecture (optax, vmap, DMD, configs, checkpoints, ...) is tests/test_architectures.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import features as F
from learned_opt.mlp import MLP, MLPConfig
from oracles import DECAYS, G1, G2, KEY, P, np_lolv2, np_mlp


def test_features_equal_formula_after_two_updates():
    lopt = MLP()
    theta = lopt.init(KEY)
    state = lopt.opt_init(theta, P)
    assert state.iteration.dtype == jnp.int32 and int(state.iteration) == 0
    _, state = jax.jit(lopt.opt_update)(theta, state, G1, P, jnp.float32(1.0), KEY)
    assert int(state.iteration) == 1
    for k in P:  # after one update m_k = (1 - d_k) g1
        np.testing.assert_allclose(state.momenta[k], (1 - DECAYS) * G1[k][..., None], rtol=1e-6)
    inputs, new_state = jax.jit(lopt.features)(theta, state, G2, P, jnp.float32(1.0))
    for k in P:
        want, want_m = np_lolv2([G1[k], G2[k]], P[k], t=1.0)
        assert inputs[k].shape == P[k].shape + (19,)
        np.testing.assert_allclose(new_state.momenta[k], want_m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(inputs[k], want, rtol=1e-5, atol=1e-6)


def test_time_features_at_known_t():
    lopt = MLP()
    state = lopt.opt_init(None, P)._replace(iteration=jnp.int32(1000))
    inputs, _ = jax.jit(lopt.features)(None, state, G2, P, jnp.float32(0.0))
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
    cfg = MLPConfig(step_mult=0.1, exp_mult=0.5, output_init_scale=1.0)
    lopt = MLP(cfg)
    theta = lopt.init(jax.random.PRNGKey(3))
    state = lopt.opt_init(theta, P)
    _, state = jax.jit(lopt.opt_update)(theta, state, G1, P, 0.0, KEY)
    new_p, new_state = jax.jit(lopt.opt_update)(theta, state, G2, P, jnp.float32(0.0), KEY)
    assert int(new_state.iteration) == 2
    for k in P:
        x, _ = np_lolv2([G1[k], G2[k]], P[k], t=1.0)
        d, m = np_mlp(theta["mlp"], x)
        d_net, m_net = lopt.network(theta, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(d_net, d, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m_net, m, rtol=1e-4, atol=1e-5)
        assert np.abs(0.5 * m).max() > 0.05  # the exp term is exercised
        want = P[k] - 0.1 * d * np.exp(0.5 * m)
        np.testing.assert_allclose(new_p[k], want, rtol=1e-4, atol=1e-5)


def test_config_sizes_and_errors():
    lopt = learned_opt.make("mlp", {"hidden_sizes": [8], "decays": [0.9]})
    assert lopt.config.num_inputs == 2 + 1 + 11
    theta = lopt.init(KEY)
    assert theta["mlp"]["linear_0"]["w"].shape == (14, 8)
    with pytest.raises(learned_opt.LearnedOptError, match="decays"):
        MLPConfig(decays=(1.5,))


def test_constant_channels_enter_the_first_layer_once():
    """nets.apply_mlp with constant=(a, b) is the plain MLP when channels a..b-1 are the same at
    every position (time features), and the declared range of each per-parameter MLP holds
    exactly such channels."""
    from learned_opt.nets import apply_mlp
    rng = np.random.default_rng(0)
    lopt = MLP()
    theta = lopt.init(KEY)
    a, b = lopt.constant_channels()
    assert (a, b) == (8, 19)
    x = rng.normal(size=(5, 7, 19)).astype(np.float32)
    x[..., a:b] = rng.normal(size=b - a)                    # constant across positions
    want = np_mlp(theta["mlp"], x)
    got = apply_mlp(theta["mlp"], jnp.asarray(x), (a, b))
    np.testing.assert_allclose(got[..., 0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[..., 1], want[1], rtol=1e-5, atol=1e-6)
    # the features the optimizer builds really are constant there, for every architecture
    for arch in ("mlp", "adafactor_mlp", "rnn_mlp"):
        opt = learned_opt.make(arch)
        th = opt.init(KEY)
        state = opt.opt_init(th, P)
        _, state = opt.opt_update(th, state, G1, P, jnp.float32(1.0), KEY)
        inputs, _ = opt.features(th, state, G2, P, jnp.float32(0.5))
        lo, hi = opt.constant_channels()
        for k in P:
            c = np.asarray(inputs[k])[..., lo:hi].reshape(-1, hi - lo)
            np.testing.assert_array_equal(c, np.broadcast_to(c[0], c.shape))
