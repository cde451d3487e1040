"""The trajectory guard (learned_opt.trajectory_guard) against its rule and its guarantee.

The headline task is a narrow valley where small steps win every greedy comparison: a 2-D
quadratic, steep (curvature 1) across the direction v = (1, 0.1)/|.| and flat (curvature 1e-3)
along it, whose minimum lies 10 along v from the start (the start is on the valley floor),
plus an irreducible loss 0.01 (so ratios compare losses, not float noise at the optimum):

    L(x) = 1/2 (w.(x - 10 v))^2 + 1/2 1e-3 (v.(x - 10 v))^2 + 0.01,      w = v rotated by 90 deg

On the floor the gradient points along v; SGD(0.5) steps along it and always lowers the loss (by
a little: the flat curvature makes it slow), while Adam's coordinatewise normalisation steps
~lr in both coordinates, off the floor, so from the same point its one-step loss is higher.
Over 200 steps Adam(0.1) walks down the valley to the floor loss; SGD(0.5) does not get far.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import (LearnedOptError, TrajectoryGuardState, final_choice, find_trajectory_guard_state,
                         loss_guard, smoothed_losses, switch_rate, trajectory_guard,
                         trajectory_guarded)
from learned_opt.mlp import MLP
from meta_train.evaluation import curves as ev
from oracles import descent_theta
from tasks import QuadraticFamily, training
from tasks.base import Task

T = 200
FLOOR = 0.01


def valley_task(noise: float = 0.0) -> Task:
    v = jnp.array([1.0, 0.1]) / jnp.sqrt(1.01)
    w = jnp.array([-v[1], v[0]])
    centre = 10.0 * v

    def clean(p):
        d = p["x"] - centre
        return 0.5 * jnp.dot(w, d) ** 2 + 0.5e-3 * jnp.dot(v, d) ** 2 + FLOOR

    return Task(name="valley", init=lambda key: {"x": jnp.zeros(2)},
                loss=lambda p, key, batch: clean({"x": p["x"] - batch}),
                sample_batch=lambda key, split="train": noise * jax.random.normal(key, (2,)),
                eval_loss=lambda p, split="test": clean(p))


def tree_max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_trees_equal(a, b, msg=""):
    assert jax.tree.structure(a) == jax.tree.structure(b), msg
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=msg)


def test_slow_learner_per_step_guard_keeps_it_trajectory_guard_ends_with_the_fallback():
    task, key = valley_task(), jax.random.PRNGKey(0)
    slow, adam = optax.sgd(0.5), optax.adam(0.1)

    @jax.jit
    def runs(k):
        return (training.train(task, adam, k, T), training.train(task, slow, k, T),
                training.train(task, loss_guard(slow, adam), k, T, guarded=True),
                training.train(task, trajectory_guard(slow, adam, check_every=30, num_steps=T,
                                                      interim_tolerance=None, keep_state=False),
                               k, T, guarded=True),
                training.train(task, trajectory_guard(slow, adam, check_every=30, num_steps=T),
                               k, T, guarded=True))

    ad, sg, step_guard, traj, default = runs(key)
    # the per-step guard keeps the slow learner at every step and ends where it ends:
    # measured final losses 0.0509 (both) vs Adam's 0.01003, 5.1x
    assert int(step_guard.opt_state.fallbacks) == 0
    np.testing.assert_allclose(step_guard.test_loss, sg.test_loss, rtol=1e-6)
    assert float(step_guard.test_loss) > 3.0 * float(ad.test_loss), (step_guard.test_loss, ad.test_loss)
    # the classic rule (every check at 5%, a fresh learned state at each switch) ends within
    # the tolerance of the fallback run's final loss. Measured:
    # 0.01038, ratio 1.036; switches at 5 of its 7 checks (every 30 steps, and the last step,
    # a check because num_steps is given), the last at step 149: from Adam's parameters near
    # the valley's end the slow learner stays within 5% (it kept the last two checks)
    g = traj.opt_state
    assert float(traj.test_loss) <= 1.05 * float(ad.test_loss), (traj.test_loss, ad.test_loss)
    assert int(g.steps) == T and int(g.checks) == T // 30 + 1
    assert 1 <= int(g.switches) <= int(g.checks) and 0 <= int(g.last_switch_step) < T
    np.testing.assert_allclose(switch_rate(g), int(g.switches) / int(g.checks))
    s_run, s_fb = smoothed_losses(g)                                    # the guarantee
    assert float(s_run) <= 1.05 * float(s_fb), (s_run, s_fb)
    # ... and the tolerance at work: the final check kept a run 3.3% behind (0.010388 vs 0.010054)
    assert float(s_run) > float(s_fb) and bool(g.following_learned)
    # the fallback run inside the guard is Adam alone, untouched by the switches
    assert tree_max_abs_diff(g.fallback_params, ad.params) < 1e-6
    assert tree_max_abs_diff(g.fallback, ad.opt_state) < 1e-6
    # the default rule (50% at the checks before the last, the learned state kept) keeps the
    # same promise at the end, with fewer switches on the way (measured: 3 of 7, two of them
    # before the last check, where the slow run trailed by more than 50%) and the last check
    # moving it onto Adam's final parameters
    d = default.opt_state
    assert float(default.test_loss) <= 1.05 * float(ad.test_loss), (default.test_loss, ad.test_loss)
    s_run, s_fb = smoothed_losses(d)
    assert float(s_run) <= 1.05 * float(s_fb), (s_run, s_fb)
    assert 1 <= int(d.switches) < int(g.switches) and int(d.checks) == int(g.checks)
    assert int(d.last_switch_step) == T - 1 and not bool(d.following_learned)
    assert tree_max_abs_diff(default.params, ad.params) < 1e-6


def test_better_candidate_is_kept_and_never_switched():
    """A well-tuned candidate (Adam 0.1 on the valley) against a poor fallback (SGD 0.5): every
    check keeps it, and the run is the candidate's own, step for step."""
    task, key = valley_task(), jax.random.PRNGKey(0)
    good, poor = optax.adam(0.1), optax.sgd(0.5)

    @jax.jit
    def runs(k):
        return (training.train(task, good, k, T),
                training.train(task, trajectory_guard(good, poor, check_every=20, num_steps=T),
                               k, T, guarded=True))

    alone, guarded_run = runs(key)
    g = guarded_run.opt_state
    assert int(g.switches) == 0 and int(g.checks) == T // 20 and int(g.last_switch_step) == -1
    assert bool(g.following_learned) and float(switch_rate(g)) == 0.0
    # the same parameters and curve as the candidate alone (measured: bit-identical)
    np.testing.assert_allclose(guarded_run.params["x"], alone.params["x"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(guarded_run.losses, alone.losses, rtol=1e-6, atol=0)
    s_run, s_fb = smoothed_losses(g)
    assert float(s_run) < float(s_fb)


def _oracle_run(task, cand, fb, key, num_steps, check_every, tol, ema, tol_mid=None, keep=False):
    """The documented rule, step by step in Python (optax calls, no guard code): the run, the
    fallback run, both EMAs, and the switch decision at each step. Returns per-step records.
    ``tol_mid``: the slack of the checks before the last (default ``tol``); ``keep``: the
    learned state survives a switch."""
    tol_mid = tol if tol_mid is None else tol_mid
    k_init, k_run, _ = jax.random.split(key, 3)
    x = task.init(k_init)
    y, s_c, s_f = x, cand.init(x), fb.init(x)
    m_x = m_y = weight = 0.0
    out = []
    for t in range(num_steps):
        k = jax.random.fold_in(k_run, t)
        k_batch, k_loss, _ = jax.random.split(k, 3)
        batch, guard_batch = task.sample_batch(k_batch), task.sample_batch(jax.random.fold_in(k, 1))
        loss_x, g_x = jax.value_and_grad(task.loss)(x, k_loss, batch)
        u, s_c_new = cand.update(g_x, s_c, x, value=loss_x)
        x_new = optax.apply_updates(x, u)
        loss_y, g_y = jax.value_and_grad(task.loss)(y, k_loss, batch)
        v, s_f = fb.update(g_y, s_f, y, value=loss_y)
        y = optax.apply_updates(y, v)
        l_x, l_y = float(task.loss(x_new, k_loss, guard_batch)), float(task.loss(y, k_loss, guard_batch))
        weight = ema * weight + (1 - ema)
        m_x, m_y = ema * m_x + (1 - ema) * l_x, ema * m_y + (1 - ema) * l_y
        s_x, s_y = m_x / weight, m_y / weight
        finite = np.isfinite(l_x) and all(np.all(np.isfinite(a)) for a in jax.tree.leaves(x_new))
        check = (t + 1) % check_every == 0 or t + 1 == num_steps or not finite
        slack = tol if t + 1 == num_steps else tol_mid
        ok = finite and np.isfinite(s_x) and (slack == np.inf or s_x - s_y <= slack * abs(s_y))
        if t + 1 == num_steps:      # the final parameters themselves, on this guard batch
            ok = ok and l_x - l_y <= tol * abs(l_y)
        switch = check and not ok
        if switch:
            x, s_c = y, (s_c_new if keep else cand.init(y))
            m_x = m_y = (1 - ema) * l_y
            weight = 1 - ema
        else:
            x, s_c = x_new, s_c_new
        out.append(dict(x=x, y=y, s_c=s_c, s_f=s_f, check=check, switch=switch,
                        s_run=m_x / weight, s_fb=m_y / weight, l_x=l_x, l_y=l_y))
    return out


@pytest.mark.parametrize("step_mult", [0.003, 0.1])
def test_switch_rule_and_both_states_follow_the_documented_oracle(step_mult):
    """A learned optimizer (MLP whose step is step_mult * normalised momentum) guarded by Adam(0.1)
    on a noisy 5-d quadratic, 22 steps, a check every 4 steps and at the last, ema 0.5: each step
    the guard's parameters, both optimizers' states, the fallback run and the counters are those
    of the rule written out in Python. After every switch the run sits at the fallback run's
    parameters and the learned state is ``candidate.init`` there; after every check the smoothed
    guard losses satisfy the guarantee."""
    steps, every, tol, ema = 22, 4, 0.05, 0.5
    family = QuadraticFamily(dim=5, max_cond=10.0, noise=0.3)
    task = family.task(family.default_cfg())
    lopt = MLP(step_mult=step_mult)
    theta, fb = descent_theta(lopt, 4), optax.adam(0.1)
    cand = learned_opt.as_optax(lopt, theta)
    tx = trajectory_guarded(lopt, theta, fb, check_every=every, tolerance=tol, num_steps=steps,
                            ema=ema, interim_tolerance=None, keep_state=False)   # the classic rule
    key = jax.random.PRNGKey(5)
    oracle = _oracle_run(task, cand, fb, key, steps, every, tol, ema)

    update = training.optax_update(tx)
    step = jax.jit(lambda p, s, k: training.train_step(task, update, p, s, k, guarded=True)[:2])
    k_init, k_run, _ = jax.random.split(key, 3)
    params = task.init(k_init)
    state = tx.init(params)
    switches = checks = 0
    last = -1
    for t, want in enumerate(oracle):
        params, state = step(params, state, jax.random.fold_in(k_run, t))
        checks += want["check"]
        switches += want["switch"]
        last = t if want["switch"] else last
        msg = f"step {t}"
        assert (int(state.steps), int(state.checks), int(state.switches),
                int(state.last_switch_step)) == (t + 1, checks, switches, last), msg
        if want["check"]:
            assert bool(state.following_learned) == (not want["switch"]), msg
        assert tree_max_abs_diff(params, want["x"]) < 1e-5, msg
        assert tree_max_abs_diff(state.candidate, want["s_c"]) < 1e-5, msg
        # the fallback run is the fallback alone from the same start on the same batches
        assert tree_max_abs_diff(state.fallback_params, want["y"]) < 1e-6, msg
        assert tree_max_abs_diff(state.fallback, want["s_f"]) < 1e-6, msg
        s_run, s_fb = (float(s) for s in smoothed_losses(state))
        np.testing.assert_allclose([s_run, s_fb], [want["s_run"], want["s_fb"]], rtol=1e-5, err_msg=msg)
        if want["switch"]:
            # consistent after the switch: the run is at the fallback run's parameters (up to
            # the rounding of x + (y - x)), the learned state is candidate.init there, exactly
            assert tree_max_abs_diff(params, state.fallback_params) < 1e-6, msg
            assert_trees_equal(state.candidate, cand.init(state.fallback_params), msg)
            assert s_run == s_fb, msg
        if want["check"]:
            assert s_run <= s_fb + tol * abs(s_fb) + 1e-7, msg            # the guarantee
        if t + 1 == steps and not want["switch"]:                         # ... and at the end
            assert want["l_x"] <= want["l_y"] + tol * abs(want["l_y"]), msg
    # both branches are exercised; measured at the 6 checks (S switch, k keep): step_mult 0.003
    # (slow) SSSSkk (kept once Adam's run is at the noise floor), 0.1 kkSSkk
    assert 0 < switches < checks == steps // every + 1          # + the last step
    first_check = next(w for w in oracle if w["check"])
    assert first_check["switch"] == (step_mult < 0.01)
    # the fallback run is unaffected by the guard: Adam alone through the same training loop
    alone = jax.jit(lambda k: training.train(task, fb, k, steps))(key)
    assert tree_max_abs_diff(state.fallback_params, alone.params) < 1e-6
    assert tree_max_abs_diff(state.fallback, alone.opt_state) < 1e-6


@pytest.mark.parametrize("tol_mid, keep", [(0.05, True), (0.5, False), (np.inf, True)])
def test_interim_tolerance_and_keep_state_follow_the_oracle(tol_mid, keep):
    """``interim_tolerance`` loosens only the checks before the last step and ``keep_state``
    carries the learned state (its step counter too) across a switch: step for step the guard is
    the oracle with those two changes; the last step still holds the final parameters to
    ``tolerance``; with ``inf`` no finite step switches before the end."""
    steps, every, tol, ema = 22, 4, 0.05, 0.5
    family = QuadraticFamily(dim=5, max_cond=10.0, noise=0.3)
    task = family.task(family.default_cfg())
    lopt = MLP(step_mult=0.003)                      # slow: the default guard switches at once
    theta, fb = descent_theta(lopt, 4), optax.adam(0.1)
    cand = learned_opt.as_optax(lopt, theta)
    tx = trajectory_guarded(lopt, theta, fb, check_every=every, tolerance=tol, num_steps=steps,
                            ema=ema, interim_tolerance=tol_mid, keep_state=keep)
    key = jax.random.PRNGKey(5)
    oracle = _oracle_run(task, cand, fb, key, steps, every, tol, ema, tol_mid, keep)
    update = training.optax_update(tx)
    step = jax.jit(lambda p, s, k: training.train_step(task, update, p, s, k, guarded=True)[:2])
    k_init, k_run, _ = jax.random.split(key, 3)
    params = task.init(k_init)
    state = tx.init(params)
    for t, want in enumerate(oracle):
        params, state = step(params, state, jax.random.fold_in(k_run, t))
        msg = f"step {t}"
        assert tree_max_abs_diff(params, want["x"]) < 1e-5, msg
        assert tree_max_abs_diff(state.candidate, want["s_c"]) < 1e-5, msg
        if want["switch"] and keep:
            # the learned state kept counting through the switch
            assert int(state.candidate.opt_state.iteration) == t + 1, msg
        if want["check"] and t + 1 < steps:
            s_run, s_fb = (float(s) for s in smoothed_losses(state))
            assert want["switch"] or tol_mid == np.inf or s_run <= s_fb + tol_mid * abs(s_fb) + 1e-7, msg
    switched = [t for t, w in enumerate(oracle) if w["switch"]]
    if tol_mid == np.inf:
        assert switched in ([], [steps - 1])         # only the last step can switch
    else:
        assert switched and switched[0] < steps - 1
    last = oracle[-1]
    if not last["switch"]:
        assert last["l_x"] <= last["l_y"] + tol * abs(last["l_y"])
    with pytest.raises(LearnedOptError, match="interim_tolerance"):
        trajectory_guard(optax.sgd(0.1), interim_tolerance=-0.5)
    with pytest.raises(LearnedOptError, match="keep_state"):
        trajectory_guard(optax.sgd(0.1), keep_state=1)


def test_non_finite_learned_step_switches_at_once():
    """A learned step that is non-finite is a check whenever it happens, and always switches,
    so the run's parameters stay finite; a non-finite fallback run keeps a finite learned one."""
    f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)                         # noqa: E731
    p0 = {"w": jnp.zeros(3)}
    fns = dict(value_fn=f, grad_fn=jax.value_and_grad(f))
    tx = trajectory_guard(optax.scale(jnp.inf), optax.sgd(0.1), check_every=10)
    u, s = tx.update(jax.grad(f)(p0), tx.init(p0), p0, **fns)
    p1 = optax.apply_updates(p0, u)
    np.testing.assert_allclose(p1["w"], 0.2 * np.ones(3), rtol=1e-6)     # SGD(0.1)'s step
    assert (int(s.checks), int(s.switches), int(s.last_switch_step)) == (1, 1, 0)
    tx = trajectory_guard(optax.sgd(0.1), optax.scale(jnp.nan), check_every=1)
    u, s = tx.update(jax.grad(f)(p0), tx.init(p0), p0, **fns)
    np.testing.assert_allclose(optax.apply_updates(p0, u)["w"], 0.2 * np.ones(3), rtol=1e-6)
    assert (int(s.checks), int(s.switches)) == (1, 0) and bool(s.following_learned)


def test_missing_arguments_and_bad_settings_are_clear_errors():
    f = lambda p: jnp.sum(p["w"] ** 2)                                 # noqa: E731
    p = {"w": jnp.ones(3)}
    g = jax.grad(f)(p)
    tx = trajectory_guard(optax.sgd(0.1))
    s = tx.init(p)
    with pytest.raises(LearnedOptError, match="value_fn"):
        tx.update(g, s, p, value=1.0, grad_fn=jax.value_and_grad(f))
    with pytest.raises(LearnedOptError, match="grad_fn"):
        tx.update(g, s, p, value=1.0, value_fn=f)
    with pytest.raises(LearnedOptError, match="params"):
        tx.update(g, s, value_fn=f, grad_fn=jax.value_and_grad(f))
    for bad in (dict(check_every=0), dict(check_every=2.5), dict(tolerance=-0.1),
                dict(num_steps=0), dict(ema=1.0), dict(ema=-0.5)):
        with pytest.raises(LearnedOptError, match=next(iter(bad))):
            trajectory_guard(optax.sgd(0.1), **bad)
    with pytest.raises(LearnedOptError, match="optax transformation"):
        trajectory_guard("adam")
    with pytest.raises(LearnedOptError, match="trajectory guard"):
        switch_rate(optax.sgd(0.1).init(p))
    assert find_trajectory_guard_state(optax.sgd(0.1).init(p)) is None
    assert float(switch_rate(s)) == 0.0
    # composes with optax.chain; the helpers find the state inside
    chained = optax.chain(optax.clip_by_global_norm(10.0), trajectory_guard(optax.sgd(0.1)))
    assert isinstance(find_trajectory_guard_state(chained.init(p)), TrajectoryGuardState)


def test_jit_vmap_and_run_task_report_the_switch_rate():
    """family_curves (run_task under jit and vmap over candidates and tasks) with the trajectory
    guard reports switches / checks; each run equals the same run alone; the per-step guard still
    reports its fallback rate through the same path; guard=True needs exactly one guard."""
    family = QuadraticFamily(dim=5, max_cond=10.0, noise=0.01)
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(3), 2))
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    steps = 40
    make = lambda lr: trajectory_guard(optax.sgd(lr), optax.adam(0.1), check_every=10,  # noqa: E731
                                       num_steps=steps)
    lrs = jnp.array([1e-3, 0.5])      # a slow SGD and a good one (curvatures in [0.1, 1])
    losses, test, rate, _, _ = ev.family_curves(family, cfgs, keys, make, lrs, steps, hparam_axis=0,
                                          guard=True)
    assert losses.shape == (2, 2, steps) and rate.shape == (2, 2)
    # measured rates [[0.6, 0.4], [0, 0]] (4 checks in the loop + the final choice on 16
    # batches): the slow SGD is replaced at the early checks (once Adam's run sits at the noise
    # floor, the slow SGD restarted there keeps up), the good never
    assert np.all(rate[0] >= 0.4) and np.all(rate[1] == 0.0), rate
    task = family.task(jax.tree.map(lambda a: a[1], cfgs))
    run = jax.jit(lambda k: training.train(task, make(0.5), k, steps, guarded=True,
                                           finalize=ev.finalize_trajectory))(keys[1])
    assert int(run.opt_state.checks) == steps // 10 + 1
    np.testing.assert_allclose(losses[1, 1], run.losses, rtol=1e-5)
    np.testing.assert_allclose(rate[1, 1], switch_rate(run.opt_state))
    l2, t2, r2, _, fb2 = jax.jit(lambda k: ev.run_task(task, make(0.5), k, steps, guard=True))(keys[1])
    np.testing.assert_allclose(r2, int(run.opt_state.switches) / int(run.opt_state.checks))
    # on_fallback: the run returned the fallback run's final parameters (its last check switched)
    assert bool(fb2) == (not bool(run.opt_state.following_learned))
    assert bool(fb2) == (tree_max_abs_diff(run.params, run.opt_state.fallback_params) < 1e-6)
    _, _, r_step, _, _ = jax.jit(lambda k: ev.run_task(task, loss_guard(optax.sgd(5.0), optax.adam(0.1)),
                                                 k, 5, guard=True))(keys[1])
    assert float(r_step) == 1.0
    both = optax.chain(loss_guard(optax.sgd(0.1)), make(0.1))
    with pytest.raises(LearnedOptError, match="both"):
        ev.run_task(task, both, keys[0], 3, guard=True)
    with pytest.raises(LearnedOptError, match="loss-guarded"):
        ev.run_task(task, optax.sgd(0.1), keys[0], 3, guard=True)


def test_lopt_apply_guard_trajectory(tmp_path, capsys):
    """`lopt apply --guard trajectory` on a shipped optimizer prints how often it switched and
    writes the counts; bare --guard keeps meaning the per-step guard."""
    from meta_train import cli
    parser = cli.build_parser()
    assert parser.parse_args(["apply", "mlp", "--task", "q", "--guard"]).guard == "step"
    assert parser.parse_args(["apply", "mlp", "--task", "q"]).guard is None
    assert cli.main(["apply", "mlp", "--task", "quadratic_10d", "--check-every", "5"]) == 2
    assert "--guard trajectory" in capsys.readouterr().err
    out = tmp_path / "apply"
    rc = cli.main(["apply", "mlp", "--task", "quadratic_10d", "--steps", "30", "--guard",
                   "trajectory", "--check-every", "10", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "curves.json").read_text())
    # 2 checks in the loop (steps 10, 20) and the final choice on the training set in place of
    # the last step's (defer_last_check)
    assert result["guard"] == "trajectory" and result["checks"] == 3 and result["check_every"] == 10
    assert 0 <= result["switches"] <= 3
    assert result["switch_rate"] == pytest.approx(result["switches"] / 3)
    assert f"switched to Adam's run at {result['switches']} of 3 checks" in printed
    assert result["learned"]["curve"] != result["adam"]["curve"]


def test_final_choice_decides_on_the_loss_it_is_given():
    """final_choice keeps the run's parameters when the given loss has them within the
    tolerance of the fallback run's, else returns the fallback run's exactly; the counters
    count it as a check; it finds the guard inside a chained state; and through run_task it is
    the last check of every trajectory-guarded run (measured per-batch noise cannot fool it)."""
    f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)                         # noqa: E731
    p0 = {"w": jnp.zeros(3)}
    tx = trajectory_guard(optax.sgd(0.1), optax.sgd(0.01), check_every=100, num_steps=50)
    p, s = p0, tx.init(p0)
    for _ in range(5):
        u, s = tx.update(jax.grad(f)(p), s, p, value_fn=f, grad_fn=jax.value_and_grad(f))
        p = optax.apply_updates(p, u)
    assert int(s.checks) == 0 and float(s.tolerance) == pytest.approx(0.05)
    # on f the run (SGD 0.1) is far ahead: kept
    kept, s1 = final_choice(s, p, f)
    assert_trees_equal(kept, p, "kept")
    assert (int(s1.checks), int(s1.switches), bool(s1.following_learned)) == (1, 0, True)
    # a loss on which the run is worse by 10% (> 5%): the fallback run's parameters, exactly
    worse = lambda q: jnp.where(jnp.allclose(q["w"], p["w"]), 1.1, 1.0)    # noqa: E731
    chosen, s2 = final_choice(s, p, worse)
    assert_trees_equal(chosen, s.fallback_params, "switched")
    assert (int(s2.checks), int(s2.switches), int(s2.last_switch_step)) == (1, 1, 4)
    assert not bool(s2.following_learned)
    # a run whose last step switched sits on the fallback's parameters: keeping them is no new
    # switch, and the run still ends on the fallback's (what run_task reports as on_fallback)
    s_last = s._replace(last_switch_step=s.steps - 1, following_learned=jnp.asarray(False))
    kept_fb, s3 = final_choice(s_last, s.fallback_params, f)
    assert_trees_equal(kept_fb, s.fallback_params, "last step switched")
    assert (int(s3.switches), bool(s3.following_learned)) == (0, False)
    # within the tolerance (4% worse): kept
    near = lambda q: jnp.where(jnp.allclose(q["w"], p["w"]), 1.04, 1.0)    # noqa: E731
    assert_trees_equal(final_choice(s, p, near)[0], p, "near")
    # nested in a chain: the guard's state is replaced in place
    chained = (optax.EmptyState(), s)
    chosen, new = final_choice(chained, p, worse)
    assert isinstance(new[0], optax.EmptyState) and int(new[1].switches) == 1
    with pytest.raises(LearnedOptError, match="trajectory guard"):
        final_choice(optax.sgd(0.1).init(p0), p0, f)


def test_deferred_last_check_leaves_the_decision_to_final_choice():
    """``defer_last_check``: the last step is no check on its guard batch (unless non-finite), so
    a last guard batch that misjudges the run cannot move it; final_choice then decides on the loss
    it is given, with the same guarantee. Here the guard batches lie (they score a parameter by
    10 * sum(w), so the run, SGD(0.1) racing towards w = 1, looks worse than its fallback SGD(0.01))
    while the true loss f has the run far ahead."""
    f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)                         # noqa: E731
    liar = lambda p: 10.0 * jnp.sum(p["w"])                             # noqa: E731
    p0, steps = {"w": jnp.zeros(3)}, 5

    def run(defer, cand=optax.sgd(0.1)):
        tx = trajectory_guard(cand, optax.sgd(0.01), check_every=100, num_steps=steps,
                              defer_last_check=defer)
        p, s = p0, tx.init(p0)
        for _ in range(steps):
            u, s = tx.update(jax.grad(f)(p), s, p, value_fn=liar, grad_fn=jax.value_and_grad(f))
            p = optax.apply_updates(p, u)
        return p, s

    p, s = run(False)                  # the in-loop last check believes the liar: switched
    assert (int(s.checks), int(s.switches)) == (1, 1)
    np.testing.assert_allclose(p["w"], s.fallback_params["w"], rtol=1e-6)
    p, s = run(True)                   # deferred: no check, the run's own parameters ...
    assert (int(s.checks), int(s.switches)) == (0, 0)
    np.testing.assert_allclose(p["w"], 1.0 - 0.8 ** steps, rtol=1e-5)   # SGD(0.1) alone
    kept, s1 = final_choice(s, p, f)   # ... which final_choice keeps on the true loss
    assert_trees_equal(kept, p, "kept")
    assert (int(s1.checks), int(s1.switches), bool(s1.following_learned)) == (1, 0, True)
    chosen, s2 = final_choice(s, p, liar)   # and on a loss that has it behind: the fallback's
    assert_trees_equal(chosen, s.fallback_params, "switched")
    assert int(s2.switches) == 1
    # a non-finite last step still switches at once
    p, s = run(True, optax.chain(optax.sgd(0.1), optax.scale_by_schedule(
        lambda t: jnp.where(t == steps - 1, jnp.inf, 1.0))))
    assert (int(s.checks), int(s.switches), int(s.last_switch_step)) == (1, 1, steps - 1)
    assert np.all(np.isfinite(p["w"]))
    with pytest.raises(LearnedOptError, match="defer_last_check needs num_steps"):
        trajectory_guard(optax.sgd(0.1), defer_last_check=True)
    with pytest.raises(LearnedOptError, match="defer_last_check must be"):
        trajectory_guard(optax.sgd(0.1), num_steps=5, defer_last_check=1)
