"""The parametric image-MLP family: masking is exact, one compile serves every sample."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adam_helper import adam_run

import tasks
from tasks.parametric import ParametricImageMLPFamily


@pytest.fixture(scope="module")
def family():
    return ParametricImageMLPFamily()


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# Written out in numpy (independent of tasks.ACTIVATIONS; jax.nn defaults: tanh-GELU,
# ELU alpha 1, leaky slope 0.01).
NP_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "sigmoid": _sigmoid,
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x * _sigmoid(x), "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "softplus": lambda x: np.logaddexp(0, x), "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
}

_JIT = {}


def jitted(family, what):
    """Jitted helpers, compiled once per family and shared by the tests."""
    if (family, what) not in _JIT:
        if what == "loss_and_grad":  # (params, cfg, batch) -> ((loss, logits), grads)
            f = jax.value_and_grad(lambda p, cfg, batch: (family.task(cfg).loss(
                p, None, batch), family.logits(cfg, p, batch["x"])), has_aux=True)
        elif what == "sample":
            f = jax.vmap(family.sample)
        elif what == "eval":  # (cfg, params, key) -> validation batch, loss, accuracy
            def f(cfg, params, key):
                task = family.task(cfg)
                return (task.sample_batch(key, "validation"), task.eval_loss(params, "validation"),
                        family.accuracy(cfg, params, "validation"))
        _JIT[family, what] = jax.jit(f)
    return _JIT[family, what]


def some_cfgs(family, n=6, seed=0):
    cfgs = jax.tree.map(np.asarray, jitted(family, "sample")(
        jax.random.split(jax.random.PRNGKey(seed), n)))
    return [jax.tree.map(lambda a: jnp.asarray(a[i]), cfgs) for i in range(n)]


def live_params(family, cfg, params):
    """The plain (unpadded) MLP inside the padded parameters: [(w, b), ...]."""
    d, ds = int(cfg["depth"]), int(cfg["dataset"])
    widths = [int(w) for w in np.asarray(cfg["widths"])[:d]]
    fan_in = [family.features[ds], *widths]
    out = [(np.asarray(params[f"hidden_{i}"]["w"])[:fan_in[i], :widths[i]],
            np.asarray(params[f"hidden_{i}"]["b"])[:widths[i]]) for i in range(d)]
    k = family.classes[ds]
    out.append((np.asarray(params["logits"]["w"])[:widths[-1], :k],
                np.asarray(params["logits"]["b"])[:k]))
    return out


def reference_logits(layers, x, activation):
    h = np.asarray(x, np.float64)
    for w, b in layers[:-1]:
        h = NP_ACTIVATIONS[activation](h @ w + b)
    return h @ layers[-1][0] + layers[-1][1]


def reference_xent(logits):
    """Per-example (logits, y) -> -log softmax[y]."""
    def xent(y):
        z = logits - logits.max(-1, keepdims=True)
        return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]
    return xent


def test_masked_network_is_the_plain_mlp_whatever_the_padding(family):
    """Logits = a plain numpy MLP of the sampled depth/widths/activation on the unpadded
    input, even after every parameter (padded ones too) is perturbed; padded parameters start
    at 0 and get exactly zero gradient; live weights follow scale * t / sqrt(fan_in)."""
    cfgs = some_cfgs(family) + [family.default_cfg("mnist1d", 1, 16, "sigmoid", 2.0, 32)]
    assert {int(c["depth"]) for c in cfgs} == {1, 2, 3}
    assert {int(c["dataset"]) for c in cfgs} == {0, 1}
    for i, cfg in enumerate(cfgs):
        ds, act = int(cfg["dataset"]), family.activations[int(cfg["activation"])]
        task = family.task(cfg)
        params = task.init(jax.random.PRNGKey(i))
        live = live_params(family, cfg, params)
        n_live = sum(w.size for w, _ in live)
        total = sum(np.count_nonzero(np.asarray(p["w"])) for p in params.values())
        assert total == n_live  # padded weights (and all biases) are 0 at init
        t = np.concatenate([np.ravel(w * np.sqrt(w.shape[0]) / float(cfg["init_scale"]))
                            for w, _ in live])
        assert np.abs(t).max() <= 2.0 + 1e-4 and abs(t.std() - 0.8796) < 0.1

        # Move every entry (as a learned optimizer might), then compare with the plain MLP.
        rng = np.random.default_rng(i)
        moved = jax.tree.map(lambda p: jnp.asarray(
            np.asarray(p) + 0.3 * rng.standard_normal(p.shape, np.float32)), params)
        x_raw, y = tasks.load_dataset(family.datasets[ds]).split("validation")
        x_raw, y = x_raw[:128], y[:128]
        x = jnp.asarray(np.pad(x_raw, ((0, 0), (0, family.num_features - x_raw.shape[1]))))
        ref = reference_logits(live_params(family, cfg, moved), x_raw, act)
        (loss, got), grads = jitted(family, "loss_and_grad")(moved, cfg,
                                                             {"x": x, "y": jnp.asarray(y)})
        k = family.classes[ds]
        np.testing.assert_allclose(got[:, :k], ref, rtol=2e-4, atol=2e-4)
        assert np.all(got[:, k:] == -np.inf)
        b = int(cfg["batch_size"])
        np.testing.assert_allclose(loss, reference_xent(ref)(y)[:b].mean(), rtol=1e-4)
        # Gradients vanish exactly outside the live blocks and not inside them.
        zeroed = jax.tree.map(np.array, grads)
        for j, (w, bias) in enumerate(live):
            name = f"hidden_{j}" if j < len(live) - 1 else "logits"
            assert np.abs(zeroed[name]["w"][:w.shape[0], :w.shape[1]]).max() > 0
            zeroed[name]["w"][:w.shape[0], :w.shape[1]] = 0
            zeroed[name]["b"][:bias.shape[0]] = 0
        assert all(np.all(g == 0) for g in jax.tree.leaves(zeroed))


def test_batch_mask_is_mean_over_first_b_examples(family):
    base = family.default_cfg("digits", 2, (32, 16), "tanh")
    params = family.task(base).init(jax.random.PRNGKey(0))
    batch = family.task(base).sample_batch(jax.random.PRNGKey(1))
    assert batch["x"].shape == (128, 64) and batch["y"].shape == (128,)
    layers = live_params(family, base, params)
    per_example = reference_xent(reference_logits(layers, batch["x"], "tanh"))(
        np.asarray(batch["y"]))
    other = family.task(base).sample_batch(jax.random.PRNGKey(2))
    for b in family.batch_choices:
        cfg = {**base, "batch_size": jnp.asarray(b, jnp.int32)}
        (loss, _), _ = jitted(family, "loss_and_grad")(params, cfg, batch)
        np.testing.assert_allclose(loss, per_example[:b].mean(), rtol=1e-5)
        # Rows beyond b do not matter at all.
        mixed = jax.tree.map(lambda u, v: u.at[b:].set(v[b:]), batch, other)
        assert float(jitted(family, "loss_and_grad")(params, cfg, mixed)[0][0]) == float(loss)
    assert jitted(family, "loss_and_grad")._cache_size() == 1


def test_batches_eval_loss_and_accuracy_use_the_sampled_dataset(family):
    for name in family.datasets:
        cfg = family.default_cfg(name, 1, 64, "relu")
        params = family.task(cfg).init(jax.random.PRNGKey(0))
        batch, eval_loss, accuracy = jitted(family, "eval")(cfg, params, jax.random.PRNGKey(3))
        ds = tasks.load_dataset(name)
        x_raw, y = ds.split("validation")
        xb = np.asarray(batch["x"])
        assert xb.shape == (family.batch_size, family.num_features)
        assert np.all(xb[:, ds.num_features:] == 0)
        rows = {r.tobytes(): label for r, label in zip(x_raw, y)}
        assert all(rows.get(r[:ds.num_features].tobytes()) == label
                   for r, label in zip(xb, np.asarray(batch["y"])))
        logits = reference_logits(live_params(family, cfg, params), x_raw, "relu")
        np.testing.assert_allclose(eval_loss, reference_xent(logits)(y).mean(), rtol=1e-4)
        np.testing.assert_allclose(accuracy, np.mean(np.argmax(logits, -1) == y), rtol=1e-6)
        np.testing.assert_allclose(family.task(cfg).normalizer(np.log(10.0)), 1.0, rtol=1e-6)
    with pytest.raises(tasks.TaskError, match="validation"):
        family.task(cfg).sample_batch(jax.random.PRNGKey(0), "valid")


def test_samples_reproducible_and_one_compiled_function(family):
    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    sample = jitted(family, "sample")
    cfgs = sample(keys)
    jax.tree.map(np.testing.assert_array_equal, cfgs, sample(keys))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[5], b, rtol=1e-6),
                 cfgs, jax.jit(family.sample)(keys[5]))
    traces = []

    @jax.jit
    @jax.vmap
    def init_and_loss(cfg, key):
        traces.append(1)
        task = family.task(cfg)
        k_init, k_batch = jax.random.split(key)
        params, batch = task.init(k_init), task.sample_batch(k_batch)
        return params, batch, task.loss(params, key, batch)

    params, batches, losses = init_and_loss(cfgs, keys)
    assert np.all(np.isfinite(losses))
    others = sample(jax.random.split(jax.random.PRNGKey(4), 8))
    named = jax.tree.map(lambda *a: jnp.stack(a), *[
        family.default_cfg(d, depth, 16, act, 1.0, 32)
        for d in family.datasets for depth in (1, 3) for act in ("gelu", "sigmoid")])
    for c in (others, named):
        assert np.all(np.isfinite(init_and_loss(c, keys)[2]))
    # Different cfgs (sampled or named): traced and compiled once.
    assert len(traces) == 1 and init_and_loss._cache_size() == 1
    cfgs, params, batches = jax.tree.map(np.asarray, (cfgs, params, batches))
    for i in (0, 7):  # a population member equals its task built alone
        cfg, p, batch = (jax.tree.map(lambda a: a[i], t) for t in (cfgs, params, batches))
        alone = family.task(cfg).init(jax.random.split(keys[i])[0])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p, alone)
        np.testing.assert_allclose(losses[i], jitted(family, "loss_and_grad")(p, cfg, batch)[0][0],
                                   rtol=1e-5)


def test_adam_trains_sampled_configs(family):
    run = jax.vmap(adam_run(family))   # 50 Adam steps at lr 1e-2, eval on the full validation split
    cfgs = some_cfgs(family, 6, seed=8)  # includes a 3-layer sigmoid at scale 0.59
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *cfgs)
    keys = jax.random.split(jax.random.PRNGKey(6), 6)
    loss_before, loss_after, _ = run(stacked, keys)
    before = np.array([float(family.task(c).normalizer(loss_before[i])) for i, c in enumerate(cfgs)])
    after = np.array([float(family.task(c).normalizer(loss_after[i])) for i, c in enumerate(cfgs)])
    assert np.all((before > 0.9) & (before < 3.0))
    # Over 256 sampled configs (lr 1e-2, 50 steps) the worst ratio was 0.97 (3-layer sigmoid,
    # init scale 0.5), the median 0.56.
    assert np.all(after < 0.98 * before) and np.median(after / before) < 0.8


def test_sampling_distribution_covers_everything(family):
    n = 400
    cfgs = jax.tree.map(np.asarray, jitted(family, "sample")(
        jax.random.split(jax.random.PRNGKey(7), n)))
    depth, widths = cfgs["depth"], cfgs["widths"]
    live = np.arange(family.max_depth)[None] < depth[:, None]
    assert np.all(widths[~live] == 0)
    for values, choices in [(cfgs["dataset"], range(len(family.datasets))),
                            (depth, range(1, family.max_depth + 1)),
                            (widths[live], family.width_choices),
                            (cfgs["activation"], range(len(family.activations))),
                            (cfgs["batch_size"], family.batch_choices)]:
        counts = np.array([np.sum(values == c) for c in choices])
        assert counts.sum() == len(values)  # nothing outside the choices
        expected = len(values) / len(choices)  # uniform: every count within 45% of expected
        assert np.all(np.abs(counts - expected) < 0.45 * expected), counts
    s = cfgs["init_scale"]
    assert s.min() >= family.min_init_scale * (1 - 1e-6)
    assert s.max() <= family.max_init_scale * (1 + 1e-6)
    assert abs(np.median(np.log(s)) - np.log(1.0)) < 0.15  # log-uniform on [log .5, log 2]


def test_datasets_with_fewer_classes_mask_their_logits():
    rng = np.random.default_rng(0)

    def split(n):
        return rng.random((n, 5), np.float32), rng.integers(0, 3, n).astype(np.int32)

    (xt, yt), (xv, yv), (xs, ys) = split(40), split(20), split(20)
    three = tasks.Dataset("three", xt, yt, xv, yv, xs, ys, num_classes=3, input_shape=(5,))
    family = ParametricImageMLPFamily(datasets=[three, "digits"], max_depth=1, widths=[8],
                                      batch_sizes=[16], activations=["tanh"])
    assert family.num_features == 64 and family.num_classes == 10
    cfg = family.default_cfg("three")

    @jax.jit
    def check(cfg):
        task = family.task(cfg)
        params = task.init(jax.random.PRNGKey(0))
        grads = jax.grad(task.loss)(params, None, task.sample_batch(jax.random.PRNGKey(1)))
        logits = family.logits(cfg, params, jnp.pad(xv, ((0, 0), (0, 59))))
        return params, logits, task.eval_loss(params, "validation"), task.normalizer(
            task.eval_loss(params)), grads

    params, logits, eval_loss, normalised, grads = check(cfg)
    assert np.all(logits[:, 3:] == -np.inf) and np.all(np.isfinite(logits[:, :3]))
    ref = reference_logits(live_params(family, cfg, params), xv, "tanh")
    np.testing.assert_allclose(logits[:, :3], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eval_loss, reference_xent(ref)(yv).mean(), rtol=1e-5)
    assert abs(float(normalised) - 1.0) < 0.1  # loss / log 3
    assert np.all(np.asarray(grads["logits"]["w"])[:, 3:] == 0)
    assert np.abs(np.asarray(grads["logits"]["w"])[:, :3]).max() > 0


def test_bad_arguments_raise_task_error(family):
    bad = [{"datasets": []}, {"max_depth": 0}, {"widths": [16, 0]}, {"batch_sizes": []},
           {"activations": ["relu", "nope"]}, {"min_init_scale": 0.0},
           {"min_init_scale": 2.0, "max_init_scale": 1.0}, {"datasets": ["digits", "digits"]}]
    for kwargs in bad:
        with pytest.raises(tasks.TaskError):
            ParametricImageMLPFamily(**kwargs)
    for kwargs in [{"dataset": "mnist"}, {"depth": 4}, {"widths": 48}, {"widths": [16, 16]},
                   {"activation": "swish"}, {"batch_size": 100}, {"init_scale": -1.0}]:
        with pytest.raises(tasks.TaskError):
            family.default_cfg(**kwargs)
    assert family.describe(family.default_cfg("digits", 2, [16, 64], "gelu", 1.0, 32)) == \
        "digits gelu (16, 64) b=32 scale=1"
