"""tasks.training: the one definition of an inner step and of a training run, shared by
meta-training (the Unroll's step), its periodic evaluation and every report."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
import tasks
from meta_train.evaluation import curves as ev
from meta_train.unroll import LOptState, learned_optimizer_unroll, normalised_loss
from tasks import training


def _sgd_by_hand(task, lr, key, num_steps, guard_lr=None):
    """The documented rule, written out step by step with plain SGD (and, with ``guard_lr``, the
    greedy choice between SGD(lr) and SGD(guard_lr) on the guard batch)."""
    k_init, k_run, _ = jax.random.split(key, 3)
    params = task.init(k_init)
    losses = []
    for t in range(num_steps):
        k = jax.random.fold_in(k_run, t)
        k_batch, k_loss, _ = jax.random.split(k, 3)
        loss, g = jax.value_and_grad(task.loss)(params, k_loss, task.sample_batch(k_batch))
        # the recorded loss: the exact expected loss where the task has one, else the batch's
        losses.append(float(loss if task.expected_loss is None else task.expected_loss(params)))
        step = lambda r: jax.tree.map(lambda p, d: p - r * d, params, g)  # noqa: E731
        if guard_lr is None:
            params = step(lr)
        else:
            guard_batch = task.sample_batch(jax.random.fold_in(k, 1))
            a, b = step(lr), step(guard_lr)
            la, lb = task.loss(a, k_loss, guard_batch), task.loss(b, k_loss, guard_batch)
            params = a if la <= lb else b
    return np.array(losses)


def test_train_follows_the_documented_key_rule():
    task = tasks.get_task("quadratic_10d")
    key = jax.random.PRNGKey(7)
    run = jax.jit(lambda k: training.train(task, optax.sgd(0.05), k, 12))(key)
    np.testing.assert_allclose(run.losses, _sgd_by_hand(task, 0.05, key, 12), rtol=1e-5)
    # guarded: value_fn scores both candidates on the guard batch of fold_in(step key, 1)
    tx = learned_opt.loss_guard(optax.sgd(0.05), optax.sgd(0.2))
    run = jax.jit(lambda k: training.train(task, tx, k, 12, guarded=True))(key)
    np.testing.assert_allclose(run.losses, _sgd_by_hand(task, 0.05, key, 12, guard_lr=0.2), rtol=1e-5)


def test_a_curve_records_the_expected_loss_where_a_task_has_one():
    """On the synthetic quadratics a step records the exact expected loss at the parameters
    before the update (not the batch's noisy loss); the optimizer still gets the batch's loss
    and gradient, so the trajectory is the same. Other tasks record the batch's loss."""
    task = tasks.get_task("quadratic_10d")
    assert task.expected_loss is not None
    key = jax.random.PRNGKey(3)
    run = jax.jit(lambda k: training.train(task, optax.sgd(0.05), k, 12))(key)
    batch_task = dataclasses.replace(task, expected_loss=None)
    batch = jax.jit(lambda k: training.train(batch_task, optax.sgd(0.05), k, 12))(key)
    np.testing.assert_array_equal(run.params["x"], batch.params["x"])       # same steps
    # by hand: E_b[1/2 sum h (x - c - b)^2] at each step's parameters
    k_init, k_run, _ = jax.random.split(key, 3)
    x = task.init(k_init)
    for t in range(12):
        k_batch, k_loss, _ = jax.random.split(jax.random.fold_in(k_run, t), 3)
        np.testing.assert_allclose(run.losses[t], task.eval_loss(x), rtol=1e-5)
        loss, g = jax.value_and_grad(task.loss)(x, k_loss, task.sample_batch(k_batch))
        np.testing.assert_allclose(batch.losses[t], loss, rtol=1e-5)
        x = jax.tree.map(lambda p, d: p - 0.05 * d, x, g)
    assert np.max(np.abs(run.losses - batch.losses)) > 1e-3      # the two measures differ
    assert tasks.get_task("mnist1d_mlp_relu").expected_loss is None


def test_longer_runs_start_with_the_shorter_runs_steps():
    task = tasks.get_task("mnist1d_mlp_relu")
    key = jax.random.PRNGKey(1)
    short = jax.jit(lambda k: training.train(task, optax.adam(1e-2), k, 10).losses)(key)
    long = jax.jit(lambda k: training.train(task, optax.adam(1e-2), k, 25).losses)(key)
    np.testing.assert_array_equal(short, long[:10])


@pytest.mark.parametrize("guard", [False, True])
def test_meta_training_steps_a_task_as_evaluation_does(guard):
    """The Unroll meta-training differentiates and the evaluation rollout train the same task
    on the same batches: same losses up to the float rounding of as_optax's updates."""
    family = tasks.get_family("quadratic")
    lopt = learned_opt.make("mlp", {"output_init_scale": 1.0})
    theta = lopt.init(jax.random.PRNGKey(0))
    fallback = optax.adam(0.05) if guard else None
    unroll = learned_optimizer_unroll(lopt, family, guard=fallback)
    cfg = family.sample(jax.random.PRNGKey(3))
    task = family.task(cfg)
    key, steps = jax.random.PRNGKey(4), 15
    tx = lopt.as_optax(theta)
    tx = learned_opt.loss_guard(tx, fallback) if guard else tx
    run = jax.jit(lambda k: training.train(task, tx, k, steps, guarded=guard))(key)

    k_init, k_run, _ = jax.random.split(key, 3)
    params = task.init(k_init)
    opt_state = (learned_opt.loss_guard(lopt.as_optax(theta), fallback).init(params) if guard
                 else lopt.opt_init(theta, params))
    state = LOptState(cfg, params, opt_state)
    meta_losses = []
    step = jax.jit(unroll.step)
    for t in range(steps):
        state, m = step(theta, state, jax.random.fold_in(k_run, t))
        meta_losses.append(m)
    np.testing.assert_allclose(np.array(meta_losses), normalised_loss(task, run.losses), rtol=2e-5)
    assert float(jnp.max(normalised_loss(task, jnp.array([1e9])))) == 10.0     # clipped as the meta-loss
    assert np.isnan(normalised_loss(task, jnp.array([jnp.nan])))[0]             # NaN kept for masking


def test_run_task_is_train_plus_the_guard_bookkeeping():
    task = tasks.get_task("quadratic_10d")
    key = jax.random.PRNGKey(2)
    losses, test, rate, final, _ = jax.jit(lambda k: ev.run_task(task, optax.sgd(0.1), k, 8))(key)
    run = jax.jit(lambda k: training.train(task, optax.sgd(0.1), k, 8))(key)
    np.testing.assert_array_equal(losses, run.losses)
    np.testing.assert_array_equal(test, run.test_loss)
    np.testing.assert_array_equal(final, run.final_loss)
    assert np.isnan(rate)
