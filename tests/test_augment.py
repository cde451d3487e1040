"""Task augmentation (tasks/augment.py) against its definition: the reparameterised task is the
same problem in other coordinates, the scales act on exactly what they claim, and the batch
option is a mean over fewer distinct examples."""
import jax
import numpy as np
import optax
import pytest

import tasks
from tasks.augment import augmented

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def family():
    return tasks.get_family("mnist1d_mlp")


def _leaves_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_reparameterised_task_is_the_same_problem(family):
    aug = augmented(family, reparam=(1e-3, 1e3))
    cfg = aug.sample(KEY)
    s = np.array(jax.tree.leaves(cfg["s"]))
    assert s.min() < 0.3 and s.max() > 3 and np.all((s >= 1e-3) & (s <= 1e3))  # scales really vary
    base, task = family.task(cfg["base"]), aug.task(cfg)
    p = base.init(jax.random.PRNGKey(1))
    batch = base.sample_batch(jax.random.PRNGKey(2))
    q = jax.tree.map(lambda x, si: x / si, p, cfg["s"])
    # the loss at the rescaled parameters equals the original loss; so does init (q0 = p0 / s)
    np.testing.assert_allclose(task.loss(q, KEY, batch), base.loss(p, KEY, batch), rtol=1e-5)
    _leaves_close(task.init(jax.random.PRNGKey(1)), q, rtol=1e-6)
    np.testing.assert_allclose(task.eval_loss(q, "test"), base.eval_loss(p, "test"), rtol=1e-5)
    # the gradient the optimizer sees is s * dL/dp (chain rule), per tensor
    gq = jax.grad(task.loss)(q, KEY, batch)
    gp = jax.grad(base.loss)(p, KEY, batch)
    _leaves_close(gq, jax.tree.map(lambda g, si: g * si, gp, cfg["s"]), rtol=1e-4, atol=1e-7)


def test_loss_and_gradient_scales(family):
    aug = augmented(family, loss_scale=(0.01, 100.0), grad_scale=(0.01, 100.0))
    cfg = aug.wrap(family.sample(KEY), c=7.0, k=0.5)
    base, task = family.task(cfg["base"]), aug.task(cfg)
    p = base.init(KEY)
    batch = base.sample_batch(KEY)
    l_base, l_aug = base.loss(p, KEY, batch), task.loss(p, KEY, batch)
    np.testing.assert_allclose(l_aug, 7.0 * l_base, rtol=1e-5)
    np.testing.assert_allclose(task.normalizer(l_aug), base.normalizer(l_base), rtol=1e-5)
    _leaves_close(jax.grad(task.loss)(p, KEY, batch),
                  jax.tree.map(lambda g: 3.5 * g, jax.grad(base.loss)(p, KEY, batch)),
                  rtol=1e-4, atol=1e-7)
    c = np.array([float(aug.sample(jax.random.PRNGKey(i))["c"]) for i in range(50)])
    assert c.min() < 0.1 and c.max() > 10


def test_batch_fraction_means_fewer_distinct_examples(family):
    aug = augmented(family, batch_fraction=(0.01, 1.0))
    cfg = aug.wrap(family.sample(KEY), b=8)
    base, task = family.task(cfg["base"]), aug.task(cfg)
    p = base.init(KEY)
    batch = base.sample_batch(KEY)
    first8 = jax.tree.map(lambda x: x[:8], batch)
    B = batch["x"].shape[0]
    assert B % 8 == 0
    np.testing.assert_allclose(task.loss(p, KEY, batch), base.loss(p, KEY, first8), rtol=1e-5)
    bs = [int(aug.sample(jax.random.PRNGKey(i))["b"]) for i in range(50)]
    assert min(bs) >= 1 and max(bs) <= B and min(bs) < B // 4


def test_augmented_family_trains_and_vmaps(family):
    aug = augmented(family, reparam=(0.1, 10.0), batch_fraction=(0.1, 1.0))

    def run(key):
        k1, k2 = jax.random.split(key)
        task = aug.task(aug.sample(k1))
        return tasks.training.train(task, optax.adam(1e-3), k2, 20).losses

    losses = jax.jit(jax.vmap(run))(jax.random.split(KEY, 3))
    assert losses.shape == (3, 20) and np.all(np.isfinite(losses))


@pytest.mark.parametrize("bad, match", [
    ({"reparam": [10.0, 1.0]}, "reparam"), ({"loss_scale": "big"}, "loss_scale"),
    ({"batch_fraction": [0.5, 2.0]}, "batch_fraction"), ({"scale": [1, 2]}, "unknown option")])
def test_bad_options_are_clear_errors(family, bad, match):
    with pytest.raises(tasks.TaskError, match=match):
        augmented(family, **bad)


def test_no_options_is_the_family_itself(family):
    assert augmented(family) is family


def test_expected_loss_follows_the_augmentation():
    """A quadratic's exact expected loss (what its curves record) through every augmentation:
    ``c * E[L(s q)]``, the mean of the augmented batch loss over batches; None for a family
    without one."""
    quad = tasks.get_family("quadratic")
    aug = augmented(quad, reparam=(0.1, 10.0), loss_scale=(0.01, 100.0), batch_fraction=(0.1, 1.0))
    cfg = aug.sample(jax.random.PRNGKey(5))
    base, task = quad.task(cfg["base"]), aug.task(cfg)
    p = base.init(jax.random.PRNGKey(1))
    q = jax.tree.map(lambda x, si: x / si, p, cfg["s"])
    np.testing.assert_allclose(task.expected_loss(q), float(cfg["c"]) * base.expected_loss(p),
                               rtol=1e-5)
    keys = jax.random.split(jax.random.PRNGKey(2), 20000)
    mc = jax.jit(jax.vmap(lambda k: task.loss(q, k, task.sample_batch(k))))(keys).mean()
    np.testing.assert_allclose(mc, task.expected_loss(q), rtol=0.03)
    assert augmented(tasks.get_family("mnist1d_mlp"), reparam=(0.1, 10.0)).task(
        augmented(tasks.get_family("mnist1d_mlp"), reparam=(0.1, 10.0)).sample(KEY)).expected_loss is None
