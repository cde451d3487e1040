"""The per-tensor LSTM + per-parameter MLP optimizer ("rnn_mlp") against numpy formulas."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
import learned_opt.hybrid_lopt  # noqa: F401  (registers "rnn_mlp")
from learned_opt import dmd
from learned_opt.base import config_from_dict, config_to_dict
from learned_opt.hybrid_lopt import HybridLOpt, HybridLOptConfig, LossStats
from meta_training_helper import quadratic_meta_training

DECAYS = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
SCALES = np.array([1, 3, 10, 30, 100, 300, 1000, 3000, 1e4, 3e4, 1e5])
EPS, A, CLIP, BETA = 1e-8, 0.1, 10.0, 0.9
KEY = jax.random.PRNGKey(0)

# matrix, 4-D kernel, scalar, and a vector whose gradient is all zeros
P = {"w": np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32),
     "k": np.array([0.3, -0.6, 0.9, 1.2], np.float32).reshape(1, 2, 1, 2),
     "s": np.array(3.0, np.float32),
     "b": np.array([0.1, -0.2], np.float32)}
G1 = {"w": np.array([[1.0, -2.0], [0.5, 0.0], [3.0, -1.0]], np.float32),
      "k": np.array([-1.0, 0.5, 0.25, 2.0], np.float32).reshape(1, 2, 1, 2),
      "s": np.array(-2.0, np.float32),
      "b": np.zeros(2, np.float32)}
G2 = {"w": np.array([[-0.5, 1.0], [2.0, 1.0], [0.0, 0.5]], np.float32),
      "k": np.array([0.5, 0.5, -1.5, 1.0], np.float32).reshape(1, 2, 1, 2),
      "s": np.array(0.7, np.float32),
      "b": np.zeros(2, np.float32)}
NAMES = sorted(P)  # jax.tree.leaves order of a dict: b, k, s, w


# ------------------------------------------------------------------ numpy reference
def np_log_loss_features(losses):
    """Per step: the two (scaled, clipped) loss features, and (l_0, e_t) after the step."""
    out, l0, ema = [], None, None
    for t, loss in enumerate(losses):
        ell = np.log(max(loss, EPS))
        if t == 0:
            l0, ema = ell, ell
        feats = A * np.clip([ell - l0, ell - ema], -CLIP, CLIP)
        ema = BETA * ema + (1 - BETA) * ell
        out.append((feats, l0, ema))
    return out


def np_momenta(grads_seq, name):
    m = np.zeros(P[name].shape + (6,))
    for g in grads_seq:
        m = DECAYS * m + (1 - DECAYS) * g[name][..., None].astype(np.float64)
    return m


def np_tensor_stats(g, p, m):
    g, p = g.astype(np.float64), p.astype(np.float64)
    n = g.size
    ax = tuple(range(g.ndim))
    logs = list(np.log(EPS + np.abs(m).mean(axis=ax)))
    logs += [0.5 * np.log(EPS**2 + np.mean(g**2)), 0.5 * np.log(EPS**2 + np.mean(p**2)),
             0.5 * np.log(EPS**2 + np.sum(g**2)), np.log(n)]
    onehot = [g.ndim == 0, g.ndim == 1, g.ndim == 2, g.ndim >= 3]
    return np.concatenate([A * np.array(logs), np.array(onehot, np.float64)])


def np_stats_matrix(grads_seq, losses):
    """S (T, 27) at step t = len(grads_seq) - 1."""
    t = len(grads_seq) - 1
    loss_feats = np_log_loss_features(losses)[t][0]
    tf = np.tanh(t / SCALES - 1.0)
    rows = []
    for k in NAMES:
        m = np_momenta(grads_seq, k)
        rows.append(np.concatenate([np_tensor_stats(grads_seq[-1][k], P[k], m), loss_feats, tf]))
    return np.stack(rows)


def np_lolv2(grads_seq, name, t):
    g, p = grads_seq[-1][name], P[name]
    raw = np.concatenate([g[..., None], p[..., None], np_momenta(grads_seq, name)], axis=-1)
    raw = raw.astype(np.float64)
    axes = tuple(range(raw.ndim - 1))
    norm = raw / np.sqrt(1e-5 + np.mean(raw**2, axis=axes, keepdims=True))
    return np.concatenate([norm, np.broadcast_to(np.tanh(t / SCALES - 1.0), p.shape + (11,))], -1)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_lstm(lstm, x, h, c):
    w = {k: np.asarray(v, np.float64) for k, v in lstm.items()}
    z = x @ w["wx"] + h @ w["wh"] + w["b"]
    zi, zf, zg, zo = np.split(z, 4, axis=-1)
    c = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zg)
    return sigmoid(zo) * np.tanh(c), c


def np_mlp(mlp, x):
    n = len(mlp)
    for i in range(n):
        x = x @ np.asarray(mlp[f"linear_{i}"]["w"], np.float64) + np.asarray(mlp[f"linear_{i}"]["b"],
                                                                             np.float64)
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return x[..., 0], x[..., 1]


def np_heads(theta, h, lr_mult):
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    ctx = h @ f64(theta["context_head"]["w"]) + f64(theta["context_head"]["b"])
    s = np.exp(lr_mult * (h @ f64(theta["lr_head"]["w"]) + f64(theta["lr_head"]["b"]))[:, 0])
    return ctx, s


# ------------------------------------------------------------------ fixtures
DEFAULT = HybridLOpt()
UPDATE = jax.jit(DEFAULT.opt_update)
STATS = jax.jit(DEFAULT.statistics)
# every head and output active, so each part of the formula is exercised
BIG = HybridLOpt(output_init_scale=1.0, lr_init_scale=1.0, step_mult=0.1, exp_mult=0.5, lr_mult=0.7)
BIG_UPDATE = jax.jit(BIG.opt_update)


def run(update, lopt, theta, grads_seq, losses):
    state = lopt.opt_init(theta, P)
    for g, loss in zip(grads_seq, losses):
        new_p, state = update(theta, state, g, P, jnp.float32(loss), KEY)
    return new_p, state


def test_config_counts():
    cfg = DEFAULT.config
    assert (cfg.num_stats, cfg.num_lstm_inputs, cfg.num_inputs) == (27, 59, 27)
    theta = DEFAULT.init(KEY)
    assert theta["lstm"]["wx"].shape == (59, 128) and theta["lstm"]["wh"].shape == (32, 128)
    assert theta["context_head"]["w"].shape == (32, 8) and theta["lr_head"]["w"].shape == (32, 1)
    assert theta["mlp"]["linear_0"]["w"].shape == (27, 32)
    np.testing.assert_array_equal(theta["lstm"]["b"][32:64], 1.0)   # forget bias
    np.testing.assert_array_equal(theta["lr_head"]["w"], 0.0)       # s_j = 1 at init


def test_tensor_statistics_equal_formula():
    theta = DEFAULT.init(KEY)
    losses = [2.0, 0.5]
    _, state = UPDATE(theta, DEFAULT.opt_init(theta, P), G1, P, jnp.float32(losses[0]), KEY)
    S, inputs, momenta, loss_stats = STATS(state, G2, P, jnp.float32(losses[1]))
    want = np_stats_matrix([G1, G2], losses)
    assert S.shape == (4, 27) and np.isfinite(np.asarray(S)).all()
    np.testing.assert_allclose(S, want, rtol=1e-5, atol=1e-6)
    # the all-zeros gradient leaf "b" (row 0): every log statistic of g and m is log(eps)
    zero_row = np.asarray(S[NAMES.index("b")])
    np.testing.assert_allclose(zero_row[:6], A * np.log(EPS), rtol=1e-6)
    np.testing.assert_allclose(zero_row[[6, 8]], A * np.log(EPS), rtol=1e-6)
    np.testing.assert_array_equal(zero_row[10:14], [0, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(S[:, 10:14]).argmax(1), [1, 3, 0, 2])  # b k s w
    for k in P:  # the LOLv2 channels are the MLP optimizer's
        np.testing.assert_allclose(inputs[k], np_lolv2([G1, G2], k, 1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(momenta[k], np_momenta([G1, G2], k), rtol=1e-5, atol=1e-7)
    # fully zero tensors (gradient and parameters) stay finite through a whole update
    Z = jax.tree.map(np.zeros_like, P)
    new_p, st = UPDATE(theta, DEFAULT.opt_init(theta, Z), Z, Z, jnp.float32(0.0), KEY)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((new_p, st)))


def test_loss_features_follow_formula_over_steps():
    theta = DEFAULT.init(KEY)
    losses = [2.0, 1.0, 4.0, 1e-7]   # the last drop, log(1e-7/2) = -16.8, is clipped at -10
    want = np_log_loss_features(losses)
    state = DEFAULT.opt_init(theta, P)
    for t, loss in enumerate(losses):
        S, _, _, ls = STATS(state, G1, P, jnp.float32(loss))
        feats, l0, ema = want[t]
        for j in range(4):   # the same for every tensor
            np.testing.assert_allclose(S[j, 14:16], feats, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([ls.log_loss0, ls.log_loss_ema], [l0, ema], rtol=1e-5)
        _, state = UPDATE(theta, state, G1, P, jnp.float32(loss), KEY)
        np.testing.assert_allclose([state.loss_stats.log_loss0, state.loss_stats.log_loss_ema],
                                   [l0, ema], rtol=1e-5)
    np.testing.assert_allclose(want[3][0][0], -A * CLIP)
    np.testing.assert_allclose(want[2][0], [A * np.log(2.0), A * (np.log(4.0) - want[1][2])],
                               rtol=1e-6)
    # a caller without losses (value 0 every step) gets zero loss features
    S, _, _, _ = STATS(state._replace(loss_stats=LossStats(jnp.float32(np.log(EPS)),
                                                           jnp.float32(np.log(EPS)))),
                       G1, P, jnp.float32(0.0))
    np.testing.assert_allclose(S[:, 14:16], 0.0, atol=1e-6)


def test_cross_tensor_mean_of_previous_hidden_states():
    theta = DEFAULT.init(KEY)
    _, state = UPDATE(theta, DEFAULT.opt_init(theta, P), G1, P, jnp.float32(1.0), KEY)
    h = np.asarray(state.lstm_state.h)
    assert h.shape == (4, 32) and np.abs(h).max() > 0.05
    S, _, _, _ = STATS(state, G2, P, jnp.float32(1.0))
    x = np.asarray(DEFAULT.lstm_inputs(S, state.lstm_state))
    assert x.shape == (4, 59)
    np.testing.assert_allclose(x[:, :27], S)
    for j in range(4):
        np.testing.assert_allclose(x[j, 27:], h.mean(axis=0), rtol=1e-6, atol=1e-7)
    # tensors exchange information: changing tensor 0's hidden state changes tensor 1's output
    net = jax.jit(DEFAULT.tensor_net)
    new, _, _ = net(theta, S, state.lstm_state)
    bumped = state.lstm_state._replace(h=state.lstm_state.h.at[0].add(0.5))
    new_b, _, _ = net(theta, S, bumped)
    assert np.abs(np.asarray(new_b.h[1] - new.h[1])).max() > 1e-3
    # ... only through the mean: permuting the other tensors' states leaves tensor 0 unchanged
    perm = state.lstm_state._replace(h=state.lstm_state.h[jnp.array([0, 3, 1, 2])])
    new_p, _, _ = net(theta, S, perm)
    np.testing.assert_allclose(new_p.h[0], new.h[0], rtol=1e-5, atol=1e-6)


def test_step_equals_numpy_evaluation():
    theta = BIG.init(jax.random.PRNGKey(3))
    losses = [1.5, 0.9]
    grads_seq = [G1, G2]
    new_p, state = run(BIG_UPDATE, BIG, theta, grads_seq, losses)
    # numpy: step 1 from zero LSTM state, then step 2
    h = c = np.zeros((4, 32))
    for t in range(2):
        S = np_stats_matrix(grads_seq[:t + 1], losses[:t + 1])
        x = np.concatenate([S, np.broadcast_to(h.mean(0), (4, 32))], axis=1)
        h, c = np_lstm(theta["lstm"], x, h, c)
    np.testing.assert_allclose(state.lstm_state.h, h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.lstm_state.c, c, rtol=1e-4, atol=1e-5)
    ctx, s = np_heads(theta, h, 0.7)
    assert np.abs(np.log(s)).max() > 0.05   # the step multiplier is exercised
    for j, k in enumerate(NAMES):
        lol = np_lolv2(grads_seq, k, 1)
        inp = np.concatenate([lol, np.broadcast_to(ctx[j], P[k].shape + (8,))], axis=-1)
        d, m = np_mlp(theta["mlp"], inp)
        assert np.abs(0.5 * m).max() > 0.05
        want = P[k] - 0.1 * s[j] * d * np.exp(0.5 * m)
        np.testing.assert_allclose(new_p[k], want, rtol=1e-4, atol=1e-5)
        assert new_p[k].dtype == P[k].dtype and new_p[k].shape == P[k].shape


def test_untrained_optimizer_takes_small_steps():
    theta = DEFAULT.init(KEY)
    new_p, state = run(UPDATE, DEFAULT, theta, [G1, G2], [1.0, 0.8])
    step = max(float(np.abs(new_p[k] - P[k]).max()) for k in P)
    assert 0 < step < 1e-4   # step_mult (1e-3) * output_init_scale (1e-2) * O(1)
    _, _, s = DEFAULT.tensor_net(theta, STATS(state, G1, P, 1.0)[0], state.lstm_state)
    np.testing.assert_array_equal(s, 1.0)


def descent_theta(lopt, sign=1.0, log_s=0.0):
    """LSTM, context and lr weights zero, lr bias ``log_s``; the MLP outputs d = sign * (the
    normalised decay-0.9 momentum, channel 4), m = 0: a normalised momentum method."""
    theta = jax.tree.map(np.zeros_like, jax.device_get(lopt.init(KEY)))
    mlp = theta["mlp"]
    mlp["linear_0"]["w"][4, :2] = [1.0, -1.0]
    mlp["linear_1"]["w"][0, 0] = mlp["linear_1"]["w"][1, 1] = 1.0
    mlp["linear_2"]["w"][:2, 0] = [sign, -sign]
    theta["lr_head"]["b"][:] = log_s / lopt.config.lr_mult
    return theta


def linear_regression():
    kx, kw = jax.random.split(jax.random.PRNGKey(42))
    x = jax.random.normal(kx, (64, 5))
    y = x @ jax.random.normal(kw, (5,)) + 0.5

    def loss(p):
        return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return loss, {"w": jnp.zeros(5), "b": jnp.zeros(())}


def test_as_optax():
    lopt = HybridLOpt(step_mult=0.02)
    loss, params = linear_regression()

    @jax.jit
    @jax.vmap
    def train(theta):  # 300 steps of the optax transformation; returns (first step, final loss)
        tx = lopt.as_optax(theta)

        def step(carry, _):
            p, st = carry
            value, grads = jax.value_and_grad(loss)(p)
            u, st = tx.update(grads, st, p, value=value)
            return (optax.apply_updates(p, u), st), u

        (p, st), us = jax.lax.scan(step, (params, tx.init(params)), None, length=300)
        assert st.key is None
        return jax.tree.map(lambda u: u[0], us), loss(p), st.opt_state.iteration

    thetas = [descent_theta(lopt), descent_theta(lopt, sign=-1.0),
              descent_theta(lopt, log_s=np.log(3.0))]
    first, final, iters = train(jax.tree.map(lambda *a: np.stack(a), *thetas))
    l0 = float(loss(params))
    np.testing.assert_array_equal(iters, 300)
    assert float(final[0]) < 0.01 * l0, (l0, final)
    assert float(final[1]) > 2 * l0           # the flipped sign diverges: the test has teeth
    for k in params:  # the per-tensor multiplier s = exp(lr bias) scales the first step exactly
        assert np.abs(np.asarray(first[k][0])).max() > 1e-3
        np.testing.assert_allclose(first[k][2], 3.0 * np.asarray(first[k][0]), rtol=1e-5)
    # the optax updates reproduce opt_update
    theta = BIG.init(KEY)
    tx = BIG.as_optax(theta)
    u, _ = jax.jit(tx.update)(G1, tx.init(P), P, value=jnp.float32(2.0))
    want, _ = BIG_UPDATE(theta, BIG.opt_init(theta, P), G1, P, jnp.float32(2.0), KEY)
    got = optax.apply_updates(P, u)
    for k in P:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_vmap_over_thetas_and_params():
    """One compiled call: 3 thetas x 2 parameter sets (each with its own statistics and
    LSTM states), against the unbatched update."""
    thetas = jax.device_get(jax.vmap(BIG.init)(jax.random.split(KEY, 3)))
    ps = jax.tree.map(lambda a, b: np.stack([a, 3 * b + 1]), P, G2)
    gs = jax.tree.map(lambda a, b: np.stack([a, b]), G1, G2)
    losses = np.array([1.0, 3.0], np.float32)
    states = jax.jit(jax.vmap(lambda p: BIG.opt_init(None, p)))(ps)
    per_params = jax.vmap(BIG.opt_update, in_axes=(None, 0, 0, 0, 0, None))
    out, new_states = jax.jit(jax.vmap(per_params, in_axes=(0, None, None, None, None, None)))(
        thetas, states, gs, ps, losses, KEY)
    assert new_states.lstm_state.h.shape == (3, 2, 4, 32)
    assert new_states.loss_stats.log_loss0.shape == (3, 2)
    for i in range(3):
        th = jax.tree.map(lambda a: a[i], thetas)
        for b in range(2):
            pb, gb = jax.tree.map(lambda a: a[b], ps), jax.tree.map(lambda a: a[b], gs)
            single, sst = BIG_UPDATE(th, BIG.opt_init(th, pb), gb, pb, losses[b], KEY)
            np.testing.assert_allclose(new_states.lstm_state.h[i, b], sst.lstm_state.h,
                                       rtol=1e-5, atol=1e-6)
            for k in P:
                np.testing.assert_allclose(out[k][i, b], single[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["w"][0, 0], out["w"][1, 0])   # thetas differ
    assert not np.allclose(out["w"][0, 0], out["w"][0, 1])   # parameter sets differ


def test_meta_gradient_is_finite_with_zero_tensors():
    theta = BIG.init(KEY)
    loss, params = linear_regression()
    params = dict(params, z=jnp.zeros((2, 2)))   # a leaf with zero gradient and zero value

    def meta_loss(th):
        def step(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p)
            return BIG.opt_update(th, s, grads, p, value, KEY), None

        (p, _), _ = jax.lax.scan(step, (params, BIG.opt_init(th, params)), None, length=3)
        return loss(p)

    g = jax.device_get(jax.jit(jax.grad(meta_loss))(theta))
    norms = {k: np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(v))) for k, v in g.items()}
    assert all(np.isfinite(list(norms.values()))) and min(norms.values()) > 0, norms


def test_config_round_trip_and_errors():
    cfg = HybridLOptConfig(hidden_sizes=(8,), lstm_hidden=4, context_dim=2, decays=(0.5, 0.9))
    again = config_from_dict(HybridLOptConfig, json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg
    lopt = learned_opt.make("rnn_mlp", {"hidden_sizes": [8], "lstm_hidden": 4, "context_dim": 2,
                                        "decays": [0.5, 0.9]})
    assert lopt.config == cfg and lopt.config.num_inputs == 2 + 2 + 11 + 2
    assert lopt.config.num_stats == 2 + 8 + 2 + 11
    assert "rnn_mlp" in learned_opt.architectures()
    with pytest.raises(learned_opt.LearnedOptError, match="unknown HybridLOptConfig key"):
        learned_opt.make("rnn_mlp", {"hidden": 3})
    for bad in ({"lstm_hidden": 0}, {"context_dim": 2.5}, {"decays": (1.0,)},
                {"loss_ema_decay": 1.0}, {"stat_eps": 0.0}, {"lr_init_scale": -1.0}):
        with pytest.raises(learned_opt.LearnedOptError, match=next(iter(bad)).split("_")[0]):
            HybridLOptConfig(**bad)
    with pytest.raises(learned_opt.LearnedOptError, match="dmd"):
        HybridLOptConfig(dmd_window=2)
    # no tensors at all: nothing to do, no NaN
    p, s = HybridLOpt().opt_update(None, HybridLOpt().opt_init(None, {}), {}, {}, 1.0)
    assert p == {} and int(s.iteration) == 1


def test_dmd_variant_appends_dmd_features():
    off = BIG
    on = HybridLOpt(BIG.config, dmd_window=6, dmd_rank=2)
    assert on.config.num_inputs == 27 + dmd.num_features(2) == 33
    theta_on, theta_off = on.init(KEY), off.init(KEY)
    assert theta_on["mlp"]["linear_0"]["w"].shape == (33, 32)
    # off's network with zero weights on the DMD channels (27:) gives identical steps
    theta_mask = jax.device_get(theta_off)
    w0 = theta_mask["mlp"]["linear_0"]["w"]
    theta_mask["mlp"]["linear_0"]["w"] = np.concatenate([w0, np.zeros((6, 32), w0.dtype)])
    update_on, update_off = jax.jit(on.opt_update), BIG_UPDATE
    s_on, s_off = on.opt_init(theta_on, P), off.opt_init(theta_off, P)
    assert s_off.dmd is None and s_on.dmd.snapshots["w"].shape == (3, 2, 6)
    for g, loss in ((G1, 1.0), (G2, 0.7), (G1, 0.5)):
        p_on, s_on = update_on(theta_mask, s_on, g, P, jnp.float32(loss), KEY)
        p_off, s_off = update_off(theta_off, s_off, g, P, jnp.float32(loss), KEY)
    for k in P:
        np.testing.assert_allclose(p_on[k], p_off[k], rtol=1e-5, atol=1e-7)
    assert int(s_on.dmd.count) == 3
    np.testing.assert_allclose(s_on.dmd.snapshots["w"][..., -1], G1["w"])
    # with weights on the DMD channels the step changes
    p_dmd, _ = update_on(theta_on, s_on, G2, P, jnp.float32(0.4), KEY)
    p_mask, _ = update_on(theta_mask, s_on, G2, P, jnp.float32(0.4), KEY)
    assert not np.allclose(p_dmd["w"], p_mask["w"])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(p_dmd))


def test_meta_training_lowers_quadratic_meta_loss():
    before, after, state = quadratic_meta_training("rnn_mlp", 300)
    # Measured here: 1.017 -> 0.720 (seed 0; seed 1 gave 1.017 -> 0.569; the per-parameter
    # MLP gets 1.017 -> 0.837 with the same settings). We require a drop of at least 0.15.
    assert np.isfinite(after) and after < before - 0.15, (before, after)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.theta))
