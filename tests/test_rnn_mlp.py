"""The per-tensor LSTM + per-parameter MLP optimizer ("rnn_mlp") against numpy formulas.
The contract it shares with every architecture (optax, vmap, DMD, configs, checkpoints, meta-
training, ...) is tests/test_architectures.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt.rnn_mlp import RNNMLP, RNNMLPConfig, LossStats
from oracles import (G1 as _G1, G2 as _G2, KEY, P as _P, SCALES, descent_theta,
                     linear_regression, np_lolv2, np_lstm_cell, np_mlp, np_momenta)

EPS, A, CLIP, BETA = 1e-8, 0.1, 10.0, 0.9

# the shared matrix, vector and scalar plus a 4-D kernel; the vector's gradient is all zeros
P = dict(_P, k=np.array([0.3, -0.6, 0.9, 1.2], np.float32).reshape(1, 2, 1, 2))
G1 = dict(_G1, k=np.array([-1.0, 0.5, 0.25, 2.0], np.float32).reshape(1, 2, 1, 2),
          b=np.zeros(2, np.float32))
G2 = dict(_G2, k=np.array([0.5, 0.5, -1.5, 1.0], np.float32).reshape(1, 2, 1, 2),
          b=np.zeros(2, np.float32))
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
        m = np_momenta([g[k] for g in grads_seq])
        rows.append(np.concatenate([np_tensor_stats(grads_seq[-1][k], P[k], m), loss_feats, tf]))
    return np.stack(rows)


def np_heads(theta, h, lr_mult):
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    ctx = h @ f64(theta["context_head"]["w"]) + f64(theta["context_head"]["b"])
    s = np.exp(lr_mult * (h @ f64(theta["lr_head"]["w"]) + f64(theta["lr_head"]["b"]))[:, 0])
    return ctx, s


def np_lolv2_of(grads_seq, name, t):
    return np_lolv2([g[name] for g in grads_seq], P[name], t)[0]


# ------------------------------------------------------------------ fixtures
DEFAULT = RNNMLP()
UPDATE = jax.jit(DEFAULT.opt_update)
STATS = jax.jit(DEFAULT.statistics)
# every head and output active, so each part of the formula is exercised
BIG = RNNMLP(output_init_scale=1.0, lr_init_scale=1.0, step_mult=0.1, exp_mult=0.5, lr_mult=0.7)
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
        np.testing.assert_allclose(inputs[k], np_lolv2_of([G1, G2], k, 1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(momenta[k], np_momenta([G1[k], G2[k]]), rtol=1e-5, atol=1e-7)
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
        h, c = np_lstm_cell(theta["lstm"], x, h, c)
    np.testing.assert_allclose(state.lstm_state.h, h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.lstm_state.c, c, rtol=1e-4, atol=1e-5)
    ctx, s = np_heads(theta, h, 0.7)
    assert np.abs(np.log(s)).max() > 0.05   # the step multiplier is exercised
    for j, k in enumerate(NAMES):
        lol = np_lolv2_of(grads_seq, k, 1)
        inp = np.concatenate([lol, np.broadcast_to(ctx[j], P[k].shape + (8,))], axis=-1)
        d, m = np_mlp(theta["mlp"], inp)
        assert np.abs(0.5 * m).max() > 0.05
        want = P[k] - 0.1 * s[j] * d * np.exp(0.5 * m)
        np.testing.assert_allclose(new_p[k], want, rtol=1e-4, atol=1e-5)
        assert new_p[k].dtype == P[k].dtype and new_p[k].shape == P[k].shape


def test_untrained_step_multiplier_is_exactly_one():
    theta = DEFAULT.init(KEY)
    _, state = run(UPDATE, DEFAULT, theta, [G1, G2], [1.0, 0.8])
    _, _, s = DEFAULT.tensor_net(theta, STATS(state, G1, P, 1.0)[0], state.lstm_state)
    np.testing.assert_array_equal(s, 1.0)
    np.testing.assert_array_equal(DEFAULT.step_scales(theta, state), 1.0)


def test_lr_bias_scales_the_first_step_exactly():
    """The per-tensor multiplier s = exp(lr bias) of the contract's descent theta (a
    normalised momentum method) scales its first optax step exactly."""
    lopt = RNNMLP(step_mult=0.02)
    loss, params = linear_regression()

    def first_step(log_s):
        theta = descent_theta(lopt, 4)
        theta["lr_head"]["b"][:] = log_s / lopt.config.lr_mult
        tx = lopt.as_optax(theta)
        value, grads = jax.value_and_grad(loss)(params)
        return jax.jit(tx.update)(grads, tx.init(params), params, value=value)[0]

    one, three = first_step(0.0), first_step(np.log(3.0))
    for k in params:
        assert np.abs(np.asarray(one[k])).max() > 1e-3
        np.testing.assert_allclose(three[k], 3.0 * np.asarray(one[k]), rtol=1e-5)


def test_config_sizes_and_errors():
    lopt = learned_opt.make("rnn_mlp", {"hidden_sizes": [8], "lstm_hidden": 4, "context_dim": 2,
                                        "decays": [0.5, 0.9]})
    assert lopt.config == RNNMLPConfig(hidden_sizes=(8,), lstm_hidden=4, context_dim=2,
                                       decays=(0.5, 0.9))
    assert lopt.config.num_inputs == 2 + 2 + 11 + 2
    assert lopt.config.num_stats == 2 + 8 + 2 + 11
    for bad in ({"lstm_hidden": 0}, {"context_dim": 2.5}, {"decays": (1.0,)},
                {"loss_ema_decay": 1.0}, {"stat_eps": 0.0}, {"lr_init_scale": -1.0}):
        with pytest.raises(learned_opt.LearnedOptError, match=next(iter(bad))):
            RNNMLPConfig(**bad)
