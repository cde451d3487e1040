"""The loss-guarded fallback (LGL2O) against its guarantee, and its use in evaluation and PES.

One jitted, vmapped scan (``SCENARIOS``) trains a small least-squares regression (minibatches
of 32 from 256 rows, params w (8, 2) and b (2,)) with four optimizers side by side on the same
batches: the guarded learned optimizer, the same learned optimizer unguarded, the fallback Adam
alone, and an Adam that is fed the guarded run's gradients (to compare the guard's fallback
state with). Each step it also recomputes, independently of the guard, both candidates' losses
on the guard batch from the pre-step states. The learned optimizer is MLP with the
``descent_theta`` of tests/oracles.py (d = normalised momentum, m = 0) whose output layer is
scaled by ``c``, so its step is ``0.001 * c * normalised momentum``; c and Adam's lr are traced,
so all scenarios share one compilation.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt.loss_guard import (LossGuardState, fallback_rate, find_guard_state, guarded,
                                    loss_guard)
from learned_opt.mlp import MLP
from meta_train.evaluation import curves as ev
from meta_train.estimators import PES
from meta_train.unroll import learned_optimizer_unroll
from tasks import QuadraticFamily

STEPS = 200
LOPT = MLP()

_kx, _kw, _kn = jax.random.split(jax.random.PRNGKey(42), 3)
X = jax.random.normal(_kx, (256, 8))
Y = X @ jax.random.normal(_kw, (8, 2)) + 0.5 + 0.1 * jax.random.normal(_kn, (256, 2))
P0 = {"w": jnp.zeros((8, 2)), "b": jnp.zeros((2,))}


def sample(key):
    i = jax.random.randint(key, (32,), 0, 256)
    return X[i], Y[i]


def loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((x @ p["w"] + p["b"] - y) ** 2, -1))


def full_loss(p):
    return loss(p, (X, Y))


def scaled_descent_theta(c):
    """descent_theta (tests/oracles.py) with the output layer scaled by c:
    d = c * (normalised momentum with decay 0.9), m = 0; layers are ReLU(x), ReLU(-x)."""
    theta = jax.tree.map(jnp.zeros_like, LOPT.init(jax.random.PRNGKey(0)))
    mlp = theta["mlp"]
    mlp["linear_0"]["w"] = mlp["linear_0"]["w"].at[4, 0].set(1.0).at[4, 1].set(-1.0)
    mlp["linear_1"]["w"] = mlp["linear_1"]["w"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    mlp["linear_2"]["w"] = mlp["linear_2"]["w"].at[0, 0].set(c).at[1, 0].set(-c)
    return theta


def tmax(a, b):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]))


def side_by_side(c, fb_lr):
    theta = scaled_descent_theta(c)
    cand, fb = learned_opt.as_optax(LOPT, theta), optax.adam(fb_lr)
    guard = loss_guard(cand, fb)

    def body(carry, k):
        pg, sg, pl, sl, pa, sa, sa_same = carry
        kb, kg = jax.random.split(k)
        batch, gbatch = sample(kb), sample(kg)
        vg, gg = jax.value_and_grad(loss)(pg, batch)
        # independent recomputation of both candidates from the pre-step states
        u_l, _ = cand.update(gg, sg.candidate, pg, value=vg)
        u_a, _ = fb.update(gg, sg.fallback, pg)
        x_l, x_a = optax.apply_updates(pg, u_l), optax.apply_updates(pg, u_a)
        l_l, l_a = loss(x_l, gbatch), loss(x_a, gbatch)
        u, sg = guard.update(gg, sg, pg, value=vg, value_fn=lambda p: loss(p, gbatch))
        pg = optax.apply_updates(pg, u)
        _, sa_same = fb.update(gg, sa_same, pg)  # standalone Adam fed the same gradients
        # unguarded learned optimizer and Adam alone, same batches
        vl, gl = jax.value_and_grad(loss)(pl, batch)
        ul, sl = cand.update(gl, sl, pl, value=vl)
        pl = optax.apply_updates(pl, ul)
        ga = jax.grad(loss)(pa, batch)
        ua, sa = fb.update(ga, sa, pa)
        pa = optax.apply_updates(pa, ua)
        rec = {"l_L": l_l, "l_A": l_a, "accepted": sg.last_loss, "used_fb": sg.used_fallback,
               "dist_L": tmax(pg, x_l), "dist_A": tmax(pg, x_a),
               "guarded": full_loss(pg), "learned": full_loss(pl), "adam": full_loss(pa)}
        return (pg, sg, pl, sl, pa, sa, sa_same), rec

    init = (P0, guard.init(P0), P0, cand.init(P0), P0, fb.init(P0), fb.init(P0))
    (pg, sg, _, _, _, _, sa_same), rec = jax.lax.scan(body, init, jax.random.split(jax.random.PRNGKey(0), STEPS))
    return rec, sg, sa_same


# (name, c, Adam lr): c = 30 -> step 0.03 (mixed choices); c = 1e4 -> step 10 (diverges);
# c = 3 -> step 0.003 against a deliberately slow Adam(1e-4).
SCENARIOS = {"mixed": (30.0, 1e-2), "diverging": (1e4, 1e-2), "better": (3.0, 1e-4)}


@pytest.fixture(scope="module")
def runs():
    cs = jnp.array([v[0] for v in SCENARIOS.values()])
    lrs = jnp.array([v[1] for v in SCENARIOS.values()])
    rec, sg, sa_same = jax.jit(jax.vmap(side_by_side))(cs, lrs)
    out = {}
    for i, name in enumerate(SCENARIOS):
        pick = lambda t, i=i: jax.tree.map(lambda x: np.asarray(x[i]), t)
        out[name] = (pick(rec), pick(sg), pick(sa_same))
    return out


def test_accepted_loss_is_min_of_candidates_every_step(runs):
    for name, (rec, sg, _) in runs.items():
        l_l, l_a, acc, used = rec["l_L"], rec["l_A"], rec["accepted"], rec["used_fb"]
        assert np.all(np.isfinite(l_a)), name
        # the guarantee: never above the fallback's candidate on the guard batch
        assert np.all(acc <= l_a), name
        want = np.where(np.isfinite(l_l), np.minimum(l_l, l_a), l_a)
        np.testing.assert_allclose(acc, want, rtol=1e-6, err_msg=name)
        np.testing.assert_array_equal(used, ~(l_l <= l_a), err_msg=name)
        # the parameters after the step are the chosen candidate
        chosen = np.where(used, rec["dist_A"], rec["dist_L"])
        assert np.max(chosen) < 1e-5, name
        assert int(sg.steps) == STEPS and int(sg.fallbacks) == int(used.sum())
        np.testing.assert_allclose(fallback_rate(sg), used.mean(), rtol=1e-6)
    # the mixed scenario really exercises both branches
    used = runs["mixed"][0]["used_fb"]
    assert 0.2 < used.mean() < 0.9, used.mean()   # measured 0.64


def test_diverging_learned_optimizer_is_rescued(runs):
    rec, sg, _ = runs["diverging"]
    l0 = float(full_loss(P0))                       # 4.43
    # unguarded: steps of ~10 per coordinate; measured final full loss 2318 (~520x the start)
    assert rec["learned"][-1] > 100 * l0, rec["learned"][-1]
    # guarded: within 1.5x of Adam(1e-2) alone (measured: identical, 0.0253)
    assert rec["guarded"][-1] <= 1.5 * rec["adam"][-1], (rec["guarded"][-1], rec["adam"][-1])
    assert rec["adam"][-1] < 0.05 * l0
    assert float(fallback_rate(sg)) > 0.95           # measured 1.0


def test_better_learned_optimizer_is_kept(runs):
    rec, sg, _ = runs["better"]
    rate = float(fallback_rate(sg))
    assert rate < 0.1, rate                          # measured 0.0
    # final loss close to the unguarded learned run (measured 0.158 both), far below Adam(1e-4)'s
    assert abs(rec["guarded"][-1] - rec["learned"][-1]) <= 0.05 * rec["learned"][-1]
    assert rec["guarded"][-1] < 0.2 * rec["adam"][-1], (rec["guarded"][-1], rec["adam"][-1])


def test_fallback_state_advances_every_step(runs):
    for name in ("better", "mixed"):
        _, sg, sa_same = runs[name]
        adam_state = sg.fallback[0]                  # ScaleByAdamState inside adam's chain
        want = sa_same[0]
        assert int(adam_state.count) == STEPS, name
        for a, b in zip(jax.tree.leaves((adam_state.mu, adam_state.nu)), jax.tree.leaves((want.mu, want.nu))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=name)
        assert np.max(np.abs(adam_state.nu["w"])) > 0
        # the learned optimizer's state advances too
        assert int(sg.candidate.opt_state.iteration) == STEPS


def test_sgd_candidates_in_a_plain_user_loop():
    # fast SGD (lr 0.3) vs slow fallback SGD (lr 0.01), default Adam fallback, and a diverging SGD (lr 5)
    def train(tx, n=30):
        params, state = P0, tx.init(P0)

        @jax.jit
        def step(params, state, k):
            kb, kg = jax.random.split(k)
            gbatch = sample(kg)
            value, grads = jax.value_and_grad(loss)(params, sample(kb))
            updates, state = tx.update(grads, state, params, value=value,
                                       value_fn=lambda p: loss(p, gbatch))
            return optax.apply_updates(params, updates), state

        for k in jax.random.split(jax.random.PRNGKey(1), n):
            params, state = step(params, state, k)
        return float(full_loss(params)), state

    l_fast, s_fast = train(loss_guard(optax.sgd(0.3), optax.sgd(0.01)))
    l_div, s_div = train(loss_guard(optax.sgd(5.0), optax.sgd(0.01)))
    l_slow, _ = train(optax.sgd(0.01))
    l_default, s_default = train(loss_guard(optax.sgd(5.0)))
    l_adam, _ = train(optax.adam(1e-3))
    # measured: rate 0.23 (the fallback wins some steps once SGD(0.3) sits at the noise floor),
    # final loss 0.0098 vs 2.42 for SGD(0.01) alone
    assert float(fallback_rate(s_fast)) < 0.5 and l_fast < 0.1 * l_slow, (l_fast, l_slow)
    assert float(fallback_rate(s_div)) == 1.0 and abs(l_div - l_slow) < 1e-5 * l_slow
    np.testing.assert_allclose(l_default, l_adam, rtol=1e-6)  # the default fallback is Adam(1e-3)
    assert float(fallback_rate(s_default)) == 1.0
    # composes with optax.chain; fallback_rate finds the guard's state inside
    _, s_chain = train(optax.chain(optax.clip_by_global_norm(10.0), loss_guard(optax.sgd(5.0), optax.sgd(0.01))), n=3)
    assert float(fallback_rate(s_chain)) == 1.0 and isinstance(find_guard_state(s_chain), LossGuardState)


def test_non_finite_candidates_and_missing_value_fn():
    p = {"w": jnp.ones(3), "unused": jnp.zeros(2)}
    g = {"w": jnp.ones(3), "unused": jnp.zeros(2)}
    f = lambda q: jnp.sum(q["w"] ** 2)                 # 3 at p
    nan_tx = optax.scale(jnp.nan)
    inf_tx = optax.scale(-jnp.inf)
    half = optax.sgd(0.5)                               # -> w = 0.5, loss 0.75
    nan_unused = optax.GradientTransformation(          # finite loss, NaN in a leaf the loss ignores
        lambda params: optax.EmptyState(),
        lambda u, s, params=None: ({"w": -0.9 * u["w"], "unused": jnp.full(2, jnp.nan)}, s))
    for cand, fb, keep_learned in [(nan_tx, half, False), (half, inf_tx, True), (half, nan_tx, True),
                                   (nan_unused, half, False), (half, optax.sgd(0.1), True)]:
        tx = loss_guard(cand, fb)
        u, s = tx.update(g, tx.init(p), p, value_fn=f)
        assert bool(s.used_fallback) == (not keep_learned), (cand, fb)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))  # the finite candidate wins
    # lower loss wins even when the fallback is the better one
    tx = loss_guard(optax.sgd(0.1), half)
    u, s = tx.update(g, tx.init(p), p, value_fn=f)
    np.testing.assert_allclose(s.last_loss, 0.75, rtol=1e-6)
    np.testing.assert_allclose(u["w"], -0.5 * np.ones(3))
    assert float(fallback_rate(tx.init(p))) == 0.0
    with pytest.raises(learned_opt.LearnedOptError, match="value_fn"):
        tx.update(g, tx.init(p), p, value=1.0)
    with pytest.raises(learned_opt.LearnedOptError, match="params"):
        tx.update(g, tx.init(p), value_fn=f)


def test_guarded_run_task_reports_fallback_rate():
    family = QuadraticFamily(dim=5, max_cond=10.0, noise=0.1)
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(3), 2))
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    # SGD candidates: lr 0.5 (stable, fast: largest curvature 1) and lr 5 (diverges), fallback Adam(0.1)
    lrs = jnp.array([0.5, 5.0])
    losses, test, rate, _, _ = ev.family_curves(family, cfgs, keys, lambda lr: loss_guard(optax.sgd(lr), optax.adam(0.1)),
                                          lrs, 60, hparam_axis=0, guard=True)
    assert losses.shape == (2, 2, 60) and rate.shape == (2, 2)
    assert np.all(rate[0] < 0.6), rate               # measured [0.40, 0.43]: the fast SGD is often kept
    assert np.all(rate[1] > 0.9), rate               # measured [0.98, 1.0]: diverging steps are refused
    assert np.all(np.isfinite(losses)) and np.all(test[1] < 0.5 * losses[1, :, 0]), (test, losses[1, :, 0])
    u_losses, u_test, u_rate, _, _ = ev.family_curves(family, cfgs, keys, lambda lr: optax.sgd(lr), lrs, 60,
                                                hparam_axis=0)
    assert np.all(np.isnan(u_rate))
    assert np.all(~np.isfinite(u_test[1]) | (u_test[1] > 1e6))   # unguarded lr 5 blows up
    # a guarded learned optimizer through run_task; guard=True without a guard is a clear error
    task = family.task(jax.tree.map(lambda x: x[0], cfgs))
    _, t_l, r_l, _, _ = jax.jit(lambda k: ev.run_task(task, guarded(LOPT, scaled_descent_theta(1e4), optax.adam(0.1)),
                                                k, 30, guard=True))(keys[0])
    assert float(r_l) == 1.0 and np.isfinite(float(t_l))
    with pytest.raises(learned_opt.LearnedOptError, match="loss-guarded"):
        ev.run_task(task, optax.sgd(0.1), keys[0], 3, guard=True)


def test_guarded_unroll_and_pes():
    family = QuadraticFamily(dim=5, max_cond=10.0)
    # a diverging learned optimizer (step 10 per coordinate): guarded vs unguarded unrolls
    theta = scaled_descent_theta(1e4)

    def losses(unroll, n=20):
        state = unroll.start(theta, jax.random.PRNGKey(0), jnp.int32(n))
        state, ls = jax.lax.scan(lambda s, k: unroll.step(theta, s, k), state,
                                 jax.random.split(jax.random.PRNGKey(1), n))
        return state, ls

    guarded_unroll = learned_optimizer_unroll(LOPT, family, episode_length=10, guard=optax.adam(0.1))
    _, ls_plain = jax.jit(lambda: losses(learned_optimizer_unroll(LOPT, family, episode_length=10)))()
    state, ls_guard = jax.jit(lambda: losses(guarded_unroll))()
    ls_plain, ls_guard = np.asarray(ls_plain), np.asarray(ls_guard)
    assert isinstance(state.opt_state, LossGuardState)
    assert int(state.opt_state.steps) == 20 and float(fallback_rate(state.opt_state)) == 1.0
    assert np.mean(ls_plain[1:]) > 5.0                # mostly clipped at max_meta_loss 10: diverged
    assert ls_guard[-1] < 0.5 * ls_guard[0], ls_guard  # guarded: Adam(0.1) makes progress
    with pytest.raises(learned_opt.LearnedOptError, match="guard"):
        learned_optimizer_unroll(LOPT, family, guard="adam")

    # a few PES outer steps through the guarded unroll (2 pairs, truncation 5). The random
    # optimizer takes ~1e-3 steps (output_init_scale 1) so both candidates win sometimes (measured
    # fallbacks [15 2 14 4] of [15 10 15 10] steps). NB: if the fallback wins every step, the
    # trajectory does not depend on theta and the PES gradient is exactly 0 (measured with the
    # default output_init_scale 0.01 even against SGD(1e-4)).
    lopt = MLP(hidden_sizes=(8,), output_init_scale=1.0)
    unroll = learned_optimizer_unroll(lopt, family, episode_length=50, guard=optax.adam(1e-3))
    pes = PES(unroll, num_pairs=2, truncation_length=5)
    th = lopt.init(jax.random.PRNGKey(2))
    est = pes.init(th, jax.random.PRNGKey(3))
    assert isinstance(est.inner.opt_state, LossGuardState) and est.inner.opt_state.steps.shape == (4,)
    estimate = jax.jit(pes.estimate)
    for i in range(3):
        grad, est, metrics = estimate(th, est, jax.random.PRNGKey(10 + i))
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grad))
        assert np.isfinite(float(metrics["meta_loss"])) and int(metrics["nonfinite_particles"]) == 0
        th = jax.tree.map(lambda t, g: t - 0.01 * g, th, grad)
    # each particle's guard has taken exactly the inner steps of its current episode
    steps = np.asarray(est.inner.opt_state.steps)
    np.testing.assert_array_equal(steps, np.concatenate([est.t, est.t]))
    assert steps.max() > 0, steps
    fallbacks = np.asarray(est.inner.opt_state.fallbacks)
    assert np.all(fallbacks <= steps) and 0 < fallbacks.sum() < steps.sum(), (fallbacks, steps)
    assert any(float(np.abs(x).max()) > 1e-4 for x in jax.tree.leaves(grad))  # measured max ~0.025
