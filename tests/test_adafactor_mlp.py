"""The Adafactor-MLP learned optimizer ("adafactor_mlp") against an independent numpy
implementation of its 39 features and step, and its meta-learned decays. The contract it shares
with every architecture (optax, vmap, DMD, configs, checkpoints, meta-training, ...) is
tests/test_architectures.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt.adafactor_mlp import AdafactorMLP, AdafactorMLPConfig
from oracles import G1 as _G1, G2 as _G2, KEY, P as _P, SCALES, np_mlp, take

DEFAULT = dict(dm=np.array([0.9, 0.99, 0.999]), dv=np.array([0.999]),
               df=np.array([0.9, 0.99, 0.999]))


def _kernel(scale, shift):
    x = np.arange(24, dtype=np.float64).reshape(2, 2, 3, 2)
    return (scale * np.sin(1.3 * x + shift)).astype(np.float32)


# the shared vector and scalar, a 2 x 3 matrix and a 4-D conv kernel (H, W, in, out)
P = dict(_P, w=np.array([[0.5, -1.0, 0.3], [2.0, 0.25, -0.4]], np.float32), k=_kernel(0.8, 0.1))
G1 = dict(_G1, w=np.array([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]], np.float32), k=_kernel(1.5, 0.7))
G2 = dict(_G2, w=np.array([[-0.5, 1.0, 0.7], [2.0, 1.0, -1.5]], np.float32), k=_kernel(0.4, 2.0))

LOPT = AdafactorMLP()
UPDATE = jax.jit(LOPT.opt_update)
FEATURES = jax.jit(LOPT.features)
LOPT1 = AdafactorMLP(output_init_scale=1.0)   # untrained steps of O(step_mult): visible


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


def check_features(theta, decays):
    """One update with G1, then the features at G2 against numpy; returns the new state."""
    state = LOPT.opt_init(theta, P)
    _, state = UPDATE(theta, state, G1, P, jnp.float32(1.0), KEY)
    assert int(state.iteration) == 1
    inputs, new_state = FEATURES(theta, state, G2, P, jnp.float32(1.0))
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
    lopt = AdafactorMLP(step_mult=0.1, exp_mult=0.5, output_init_scale=1.0)
    theta = lopt.init(jax.random.PRNGKey(3))
    update = jax.jit(lopt.opt_update)
    _, state = update(theta, lopt.opt_init(theta, P), G1, P, 0.0, KEY)
    new_p, _ = update(theta, state, G2, P, jnp.float32(0.0), KEY)
    for name in P:
        x, _ = np_adafactor([G1[name], G2[name]], P[name], **DEFAULT)
        d, m = np_mlp(theta["mlp"], x)
        assert np.abs(0.5 * m).max() > 0.05  # the exp term is exercised
        np.testing.assert_allclose(new_p[name], P[name] - 0.1 * d * np.exp(0.5 * m),
                                   rtol=1e-4, atol=1e-5)
        assert new_p[name].dtype == P[name].dtype


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
    with pytest.raises(learned_opt.LearnedOptError, match="same length"):
        AdafactorMLPConfig(momentum_decays=(0.9,))
    with pytest.raises(learned_opt.LearnedOptError, match="rms_decay"):
        AdafactorMLPConfig(rms_decay=1.0)


def test_vmap_uses_each_members_decays():
    """Two steps, 3 thetas with different momentum decays in one compiled call, against the
    unbatched update (the contract's vmap test has thetas that differ only in the MLP)."""
    lopt = LOPT1
    thetas = jax.vmap(lopt.init)(jax.random.split(KEY, 3))
    thetas["log_one_minus_momentum_decays"] = jnp.log(jnp.array(
        [[0.1, 0.01, 0.001], [0.5, 0.5, 0.5], [0.9, 0.2, 0.05]]))
    update = jax.jit(lopt.opt_update)

    def two_steps(th):
        p, s = lopt.opt_update(th, lopt.opt_init(th, P), G1, P, 0.0, KEY)
        return lopt.opt_update(th, s, G2, p, 0.0, KEY)

    batched_p, batched_s = jax.jit(jax.vmap(two_steps))(thetas)
    for i in range(3):
        th = take(thetas, i)
        p, s = update(th, lopt.opt_init(th, P), G1, P, 0.0, KEY)
        p, s = update(th, s, G2, p, 0.0, KEY)
        for k in P:
            np.testing.assert_allclose(batched_p[k][i], p[k], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(batched_s.fac_momenta[k][i], s.fac_momenta[k], rtol=1e-5,
                                       atol=1e-6)
    assert not np.allclose(batched_s.momenta["w"][0], batched_s.momenta["w"][1])
