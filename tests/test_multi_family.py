"""Meta-training on several task families at once (meta_train.estimators.MultiFamily and the
trainer's families config): the meta-gradient is the weighted sum of the single-family ones with
the same keys; configs are checked; metrics are reported per family."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
import tasks
from meta_train.config import ConfigError, get_config
from meta_train.estimators import PES, MultiFamily, NRES
from meta_train.trainer import MetaTrainer
from meta_train.unroll import learned_optimizer_unroll


def test_multi_family_gradient_is_the_weighted_sum_of_single_family_ones():
    lopt = learned_opt.make("norm_mlp")
    theta = lopt.init(jax.random.PRNGKey(0))
    fams = [tasks.get_family("quadratic"),
            tasks.augmented(tasks.get_family("quadratic", dim=4), reparam=(0.1, 10.0))]
    ests = [PES(learned_optimizer_unroll(lopt, fams[0], (10, 20)), num_pairs=2, truncation_length=5),
            NRES(learned_optimizer_unroll(lopt, fams[1], (10, 20)), num_pairs=3, truncation_length=5)]
    multi = MultiFamily(ests, [3.0, 1.0], ["a", "b"])
    key_init, key = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    state = multi.init(theta, key_init)
    grad, new_state, metrics = jax.jit(multi.estimate)(theta, state, key)

    k_init, k_est = jax.random.split(key_init, 2), jax.random.split(key, 2)
    singles = [jax.jit(e.estimate)(theta, e.init(theta, ki), k) for e, ki, k in zip(ests, k_init, k_est)]
    want = jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, singles[0][0], singles[1][0])
    for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)
    for s, single in zip(new_state, singles):
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(single[1])):
            np.testing.assert_array_equal(a, b)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(singles[1][0])) > 0
    np.testing.assert_allclose(metrics["meta_loss"], 0.75 * singles[0][2]["meta_loss"]
                               + 0.25 * singles[1][2]["meta_loss"], rtol=1e-6)
    assert float(metrics["b/meta_loss"]) == pytest.approx(float(singles[1][2]["meta_loss"]))
    norms = [np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(s[0]))) for s in singles]
    np.testing.assert_allclose([metrics["a/grad_norm"], metrics["b/grad_norm"]], norms, rtol=1e-5)

    # balance=True: each family's estimate at unit norm, then weighted
    balanced = MultiFamily(ests, [3.0, 1.0], ["a", "b"], balance=True)
    grad_b, _, _ = jax.jit(balanced.estimate)(theta, balanced.init(theta, key_init), key)
    want = jax.tree.map(lambda a, b: 0.75 * a / norms[0] + 0.25 * b / norms[1],
                        singles[0][0], singles[1][0])
    for g, w in zip(jax.tree.leaves(grad_b), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)
    assert norms[0] / norms[1] > 1.5 or norms[1] / norms[0] > 1.5   # so the two differ


def test_trainer_runs_families_with_their_own_populations():
    cfg = get_config("smoke").replace(architecture="norm_mlp", families=[
        "quadratic", {"family": "quadratic", "kwargs": {"dim": 3}, "num_pairs": 3, "label": "small"}])
    tr = MetaTrainer(cfg)
    assert [e.label for e in tr.entries] == ["quadratic", "small"]
    state = tr.init()
    assert [s.t.shape[0] for s in state.est_state] == [2, 3]   # pairs per family
    state, metrics = tr.outer_step(state)
    assert {"quadratic/meta_loss", "small/meta_loss", "meta_loss"} <= set(metrics)
    ev = tr.evaluate(state.theta)
    assert {"quadratic/eval_mean_loss", "small/eval_mean_loss", "eval_mean_loss"} <= set(ev)
    np.testing.assert_allclose(ev["eval_mean_loss"], (ev["quadratic/eval_mean_loss"]
                                                      + ev["small/eval_mean_loss"]) / 2, rtol=1e-6)


@pytest.mark.parametrize("families, match", [
    ([{"kwargs": {}}], "'family' key"), ([{"family": "quadratic", "weight": -1}], "weight"),
    ([{"family": "quadratic", "pairs": 2}], "unknown families entry key"),
    ([{"family": "quadratic", "num_pairs": 0}], "num_pairs")])
def test_bad_family_entries_are_clear_errors(families, match):
    with pytest.raises(ConfigError, match=match):
        get_config("smoke").replace(families=families)
