"""Conv classifiers (2-D on digits, 1-D on MNIST-1D) and MLP autoencoders (CPU, no network)."""
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from tasks.autoencoder import MEAN_CLIP, AutoencoderFamily
from tasks.conv import conv_forward, conv_layer, scaled_init

ACT = {"relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh}


def reference_conv(x, w, b, stride):
    """'SAME' conv written out: out[n, p, o] = sum_{k, c} x_pad[n, s p + k, c] w[k, c, o] + b[o],
    over 1 or 2 spatial axes, padding each axis by max((ceil(n/s)-1) s + K - n, 0), the odd
    element after."""
    nd = x.ndim - 2
    pads, outs = [], []
    for n, k in zip(x.shape[1:1 + nd], w.shape[:nd]):
        out = -(-n // stride)
        total = max((out - 1) * stride + k - n, 0)
        pads.append((total // 2, total - total // 2))
        outs.append(out)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    y = np.zeros((x.shape[0], *outs, w.shape[-1]))
    for pos in np.ndindex(*outs):
        for off in np.ndindex(*w.shape[:nd]):
            idx = tuple(stride * p + o for p, o in zip(pos, off))
            y[(slice(None), *pos)] += np.einsum("nc,co->no", xp[(slice(None), *idx)], w[off])
    return y + b


def reference_logits(params, x, act, stride):
    h, i = np.asarray(x, np.float64), 0
    while f"conv_{i}" in params:
        p = params[f"conv_{i}"]
        h = ACT[act](reference_conv(h, np.asarray(p["w"]), np.asarray(p["b"]), stride))
        i += 1
    h = h.mean(axis=tuple(range(1, h.ndim - 1)))
    return h @ np.asarray(params["logits"]["w"]) + np.asarray(params["logits"]["b"])


def reference_xent(logits, y):
    logits = logits - logits.max(-1, keepdims=True)
    return np.mean(np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(y)), y])



_EVALUATORS = {}


def evaluator(family):
    """jit (cfg, params, key) -> (batch from key, loss on it, {split: full-split loss}); one
    compile per family, shared by the tests below (eager dispatch of each op costs more)."""
    if family not in _EVALUATORS:
        @jax.jit
        def evaluate(cfg, params, key):
            task = family.task(cfg)
            batch = task.sample_batch(key)
            splits = {s: task.eval_loss(params, s) for s in ("train", "validation", "test")}
            return batch, task.loss(params, None, batch), splits

        _EVALUATORS[family] = evaluate
    return _EVALUATORS[family]


# ---------------------------------------------------------------- conv

@pytest.mark.parametrize("spatial,stride", [((5,), 2), ((8,), 3), ((5, 6), 2), ((4, 3), 1)])
def test_conv_forward_matches_loop_reference(spatial, stride):
    """Odd and even sizes, strides 1-3: exact SAME padding (incl. the asymmetric case)."""
    rng = np.random.default_rng(0)
    nd = len(spatial)
    shapes = {"conv_0": (3,) * nd + (2, 3), "conv_1": (2,) * nd + (3, 4), "logits": (4, 5)}
    params = scaled_init(jax.random.PRNGKey(1), shapes, 1.0)
    params = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32), params)
    x = rng.standard_normal((3, *spatial, 2)).astype(np.float32)
    w, b = np.asarray(params["conv_0"]["w"]), np.asarray(params["conv_0"]["b"])
    got = conv_layer(jnp.asarray(x), w, b, stride)  # every output position, before act
    np.testing.assert_allclose(got, reference_conv(x, w, b, stride), rtol=1e-5, atol=1e-5)
    assert got.shape[1:-1] == tuple(-(-n // stride) for n in spatial)
    for act in ("relu", "tanh"):
        got = conv_forward(params, jnp.asarray(x), tasks.ACTIVATIONS[act], stride)
        np.testing.assert_allclose(got, reference_logits(params, x, act, stride), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("dataset,example,kernels", [
    ("digits", (8, 8, 1), [(3, 3, 1, 8), (3, 3, 8, 16)]),
    ("mnist1d", (40, 1), [(3, 1, 8), (3, 8, 16)])])
def test_conv_family_shapes_data_and_loss(dataset, example, kernels):
    family = tasks.get_family(f"{dataset}_conv")
    assert family.example_shape == example
    cfg = family.default_cfg("tanh")
    task = family.task(cfg)
    key = jax.random.PRNGKey(0)
    params = task.init(key)
    assert [params[f"conv_{i}"]["w"].shape for i in range(2)] == kernels
    assert params["conv_1"]["b"].shape == (16,) and params["logits"]["w"].shape == (16, 10)
    # Flat rows are reshaped row-major: digits pixel (r, c) is feature 8 r + c.
    flat = tasks.load_dataset(dataset).split("test")[0]
    x = np.asarray(family.data["test"][0])
    np.testing.assert_array_equal(x.reshape(len(x), -1), flat)
    if dataset == "digits":
        assert x[7, 2, 5, 0] == flat[7, 8 * 2 + 5]
    # init: w * sqrt(fan_in) ~ truncated N(0, 1), doubled by init_scale 2, zero biases.
    t = np.concatenate([np.ravel(p["w"] * math.sqrt(math.prod(p["w"].shape[:-1])))
                        for p in params.values()])
    assert np.abs(t).max() <= 2.0 + 1e-5 and abs(t.std() - 0.8796) < 0.06
    assert all(np.all(p["b"] == 0) for p in params.values())
    doubled = family.task(family.default_cfg("tanh", 2.0)).init(key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 2 * a, rtol=1e-6), params, doubled)
    # loss and eval_loss against the written-out network; normaliser log(10).
    batch, loss, evals = evaluator(family)(cfg, params, jax.random.PRNGKey(2))
    assert batch["x"].shape == (64, *example)
    np.testing.assert_allclose(
        loss, reference_xent(reference_logits(params, batch["x"], "tanh", 2),
                             np.asarray(batch["y"])), rtol=1e-4)
    xv, yv = family.data["validation"]
    ref = reference_xent(reference_logits(params, xv, "tanh", 2), np.asarray(yv))
    np.testing.assert_allclose(evals["validation"], ref, rtol=1e-4)
    np.testing.assert_allclose(task.normalizer(math.log(10.0)), 1.0, rtol=1e-6)


def test_conv_and_autoencoder_bad_arguments_raise_task_error():
    bad = [("digits_conv", {"channels": []}), ("digits_conv", {"channels": [8, 0]}),
           ("digits_conv", {"kernel": 0}), ("mnist1d_conv", {"stride": 0}),
           ("digits_conv", {"activations": ["nope"]}), ("digits_conv", {"batch_size": 0}),
           ("digits_autoencoder", {"hidden_sizes": []}),
           ("digits_autoencoder", {"max_init_scale": 0.1})]
    for name, kwargs in bad:
        with pytest.raises(tasks.TaskError):
            tasks.get_family(name, **kwargs)
    with pytest.raises(tasks.TaskError, match=r"\[0, 1\]"):
        AutoencoderFamily(dataset="mnist1d")  # standardised signals: no sigmoid output
    with pytest.raises(tasks.TaskError, match="sigmoid"):
        tasks.get_family("digits_conv").default_cfg("sigmoid")


# ---------------------------------------------------------------- autoencoder

def test_autoencoder_normaliser_mean_image_and_adam_improves():
    family = tasks.get_family("digits_autoencoder")
    x_train = tasks.load_dataset("digits").split("train")[0].astype(np.float64)
    mean = x_train.mean(0)
    base = np.mean((x_train - mean) ** 2)
    cfg = family.default_cfg("relu")
    task = family.task(cfg)
    np.testing.assert_allclose(task.normalizer(base), 1.0, rtol=1e-6)
    params = task.init(jax.random.PRNGKey(0))
    shapes = {k: v["w"].shape for k, v in params.items()}
    assert shapes == {"hidden_0": (64, 32), "hidden_1": (32, 8), "hidden_2": (8, 32),
                      "output": (32, 64)}

    # At init the model is the mean-image predictor (clipped away from 0 and 1).
    x_hat = family.reconstruct(cfg, params, family.data["train"][:5])
    np.testing.assert_allclose(x_hat, np.broadcast_to(np.clip(mean, MEAN_CLIP, 1 - MEAN_CLIP),
                                                      (5, 64)), rtol=1e-5, atol=1e-7)
    _, _, evals0 = evaluator(family)(cfg, params, jax.random.PRNGKey(1))
    np.testing.assert_allclose(task.normalizer(evals0["train"]), 1.0, atol=1e-4)
    # Same inside one jit that also inits: guards against XLA:CPU's miscompiled matmul with
    # a constant operand (jaxlib 0.10.2), which a jnp.zeros output layer would hit.
    at_init = jax.jit(lambda k: task.normalizer(task.eval_loss(task.init(k), "train")))
    np.testing.assert_allclose(at_init(jax.random.PRNGKey(0)), 1.0, atol=1e-4)
    # The loss is the mean squared error of the written-out network.
    rng = np.random.default_rng(0)
    p = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32), params)
    batch, loss, _ = evaluator(family)(cfg, p, jax.random.PRNGKey(1))
    h = np.asarray(batch["x"], np.float64)
    for i in range(3):
        h = np.maximum(h @ p[f"hidden_{i}"]["w"] + p[f"hidden_{i}"]["b"], 0)
    ref = np.mean((1 / (1 + np.exp(-(h @ p["output"]["w"] + p["output"]["b"])))
                   - batch["x"]) ** 2)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    # 150 Adam steps: held-out reconstruction well below the mean image's.
    opt = optax.adam(1e-2)

    @jax.jit
    def train(params, key):
        def step(carry, k):
            q, s = carry
            g = jax.grad(task.loss)(q, k, task.sample_batch(k))
            u, s = opt.update(g, s, q)
            return (optax.apply_updates(q, u), s), None
        return jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, 150))[0][0]

    evals1 = evaluator(family)(cfg, train(params, jax.random.PRNGKey(2)), jax.random.PRNGKey(1))[2]
    test0, test1 = (float(task.normalizer(e["test"])) for e in (evals0, evals1))
    assert 0.95 < test0 < 1.05 and test1 < 0.5, (test0, test1)


# ---------------------------------------------------------------- families: vmap, optimizers

@pytest.mark.parametrize("name", ["digits_conv", "mnist1d_conv", "digits_autoencoder"])
def test_family_vmapped_loss_matches_loop_and_is_reproducible(name):
    family = tasks.get_family(name)
    keys = jax.random.split(jax.random.PRNGKey(4), 4)

    def init_and_loss(key):
        cfg = family.sample(key)
        task = family.task(cfg)
        k_init, k_batch, k_noise = jax.random.split(key, 3)
        params = task.init(k_init)
        # A non-trivial point (the autoencoder starts at the same output for every cfg).
        # Random, not a constant shift: XLA:CPU (jaxlib 0.10.2) returns NaN or garbage for a
        # jitted dot whose operand is a broadcast scalar fused with a reduction.
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        params = unravel(flat + 0.05 * jax.random.normal(k_noise, flat.shape))
        return cfg, params, task.loss(params, None, task.sample_batch(k_batch))

    population = jax.jit(jax.vmap(init_and_loss))
    cfgs, params, losses = population(keys)
    jax.tree.map(np.testing.assert_array_equal, (cfgs, losses), population(keys)[::2])
    assert len(np.unique(np.asarray(cfgs["init_scale"]))) == 4
    lo, hi = np.asarray(cfgs["init_scale"]).min(), np.asarray(cfgs["init_scale"]).max()
    assert family.min_init_scale <= lo and hi <= family.max_init_scale
    assert np.all(np.isfinite(losses))
    # Each member of the population equals its task built and evaluated alone.
    for i in range(4):
        cfg, p = jax.tree.map(lambda a: a[i], (cfgs, params))
        alone = evaluator(family)(cfg, p, jax.random.split(keys[i], 3)[1])[1]
        np.testing.assert_allclose(losses[i], alone, rtol=2e-5)
    assert len(np.unique(np.round(np.asarray(losses), 5))) == 4


def test_learned_optimizer_steps_conv_params():
    import learned_opt
    lopt = learned_opt.make("mlp")
    theta = lopt.init(jax.random.PRNGKey(0))
    tx = lopt.as_optax(theta)
    task = tasks.get_task("digits_conv_relu")
    params = task.init(jax.random.PRNGKey(1))
    assert params["conv_0"]["w"].ndim == 4

    @jax.jit
    def step(params, state, key):
        batch = task.sample_batch(key)
        loss, grads = jax.value_and_grad(task.loss)(params, key, batch)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    state, p = tx.init(params), params
    for k in jax.random.split(jax.random.PRNGKey(2), 5):
        p, state, loss = step(p, state, k)
        assert np.isfinite(loss)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p)):
        assert a.shape == b.shape and np.all(np.isfinite(b))
    assert np.abs(p["conv_0"]["w"] - params["conv_0"]["w"]).max() > 0
