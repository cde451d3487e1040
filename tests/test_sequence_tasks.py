"""Character-level RNN language models (tasks.sequence, tasks.text) and the noisy quadratic
model (tasks.nqm): formulas against numpy, batches against the data, statistics against theory."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adam_helper import adam_run

from tasks import text
from tasks.base import TaskError
from tasks.nqm import NQMFamily, curvatures
from tasks.sequence import TextRNNFamily

LOG_V = math.log(text.VOCAB_SIZE)


@pytest.fixture(scope="module")
def tiny():
    """Tiny families (hidden 8, windows of 5, batches of 3), one per cell."""
    return {cell: TextRNNFamily(cell=cell, hidden_size=8, seq_len=5, batch_size=3)
            for cell in ("rnn", "gru", "lstm")}


# ---------------------------------------------------------------- corpus

def test_corpus_vocabulary_and_splits(tmp_path, monkeypatch):
    docs = text.load_text("stdlib_docs")
    assert len(docs) > 200_000 and "Return" in docs
    ids = text.encode(docs)
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < text.VOCAB_SIZE
    assert np.mean(ids == text.OTHER_ID) < 1e-3  # nearly all printable ASCII or newline
    sample = "def f(x):\n    return x ~ 1\t\u00e9"
    np.testing.assert_array_equal(text.encode(sample)[[0, 9, 23, 26, 27]],
                                  [ord("d") - 30, text.NEWLINE_ID, ord("~") - 30, 0, 0])
    assert text.decode(text.encode(sample[:-2])) == sample[:-2]
    splits = text.corpus_splits("stdlib_docs")
    np.testing.assert_array_equal(np.concatenate([splits[s] for s in text.SPLITS]), ids)
    sizes = np.array([len(splits[s]) for s in text.SPLITS]) / len(ids)
    np.testing.assert_allclose(sizes, [0.8, 0.1, 0.1], atol=1e-4)
    # A Python without its stdlib sources: a TaskError naming the file, not a traceback.
    monkeypatch.setattr(text, "stdlib_dir", lambda: str(tmp_path))
    with pytest.raises(TaskError, match="typing.py"):
        text.load_text.__wrapped__("stdlib_docs")
    with pytest.raises(TaskError, match="stdlib_code"):
        text.load_text("wikipedia")


# ---------------------------------------------------------------- RNN language model

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


NP_ACTS = {"tanh": np.tanh, "soft_sign": lambda x: x / (1 + np.abs(x)),
           "hard_tanh": lambda x: np.clip(x, -1.0, 1.0)}


def reference_logits(cell, act, params, inputs):
    """The cells written out in numpy, one position and one gate at a time."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    emb, u, b = p["embed"]["w"], p["core"]["u"], p["core"]["b"]
    hid = u.shape[0]
    h = np.zeros((inputs.shape[0], hid))
    c = np.zeros_like(h)
    out = []
    for t in range(inputs.shape[1]):
        x = emb[inputs[:, t]] + b
        gate = lambda k, v: v[:, k * hid:(k + 1) * hid]  # noqa: E731
        if cell == "rnn":
            h = act(x + h @ u)
        elif cell == "gru":
            uh = h @ u
            r = sigmoid(gate(0, x) + gate(0, uh))
            z = sigmoid(gate(1, x) + gate(1, uh))
            h = (1 - z) * act(gate(2, x) + r * gate(2, uh)) + z * h
        else:
            a = x + h @ u
            c = sigmoid(gate(1, a)) * c + sigmoid(gate(0, a)) * act(gate(2, a))
            h = sigmoid(gate(3, a)) * act(c)
        out.append(h @ p["out"]["w"] + p["out"]["b"])
    return np.stack(out, 1)


def reference_xent(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.mean(np.take_along_axis(logp, targets[..., None], -1))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_rnn_population_matches_numpy(tiny, cell):
    """A vmapped population (one cfg per activation) against the cells written in numpy."""
    family = tiny[cell]
    scales = jnp.array([1.7, 1.0, 0.6])
    cfgs = {"activation": jnp.arange(3, dtype=jnp.int32), "init_scale": scales}
    batch = family.task(family.default_cfg()).sample_batch(jax.random.PRNGKey(3))

    @jax.jit
    @jax.vmap
    def member(cfg):
        task = family.task(cfg)
        params = task.init(jax.random.PRNGKey(1))  # same key: same draw, scaled
        # Biases are zero at init: give them values so the reference checks where they enter.
        params["core"]["b"] = 0.3 * jax.random.normal(jax.random.PRNGKey(2),
                                                      params["core"]["b"].shape)
        params["out"]["b"] = 0.1 * jnp.arange(97.0) / 97
        return params, family.logits(cfg, params, batch["inputs"]), task.loss(params, None, batch)

    params, logits, losses = member(cfgs)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    assert params["embed"]["w"].shape == (3, 97, gates * 8)
    assert params["core"]["u"].shape == (3, 8, gates * 8)
    # init: init_scale * t / sqrt(fan_in) with t ~ N(0, 1) truncated to [-2, 2]
    for name in ("embed", "core", "out"):
        w = params[name]["w" if name != "core" else "u"]
        np.testing.assert_allclose(w[0] / 1.7, w[1], rtol=1e-6)
        np.testing.assert_allclose(w[2] / 0.6, w[1], rtol=1e-6)
    assert np.abs(params["core"]["u"][1]).max() <= 2 / math.sqrt(8) + 1e-6
    assert np.abs(params["embed"]["w"][1]).max() <= 2 + 1e-6
    inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
    for i, act in enumerate(family.activations):
        p = jax.tree.map(lambda a: a[i], params)
        ref = reference_logits(cell, NP_ACTS[act], p, inputs)
        np.testing.assert_allclose(logits[i], ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(losses[i], reference_xent(ref, targets), rtol=1e-5)
    assert np.abs(np.diff(np.asarray(losses))).min() > 1e-3  # the activations differ


def test_windows_come_from_their_split_and_targets_are_shifted(tiny):
    family = tiny["gru"]
    task = family.task(family.default_cfg())
    sample = jax.jit(lambda keys: {s: jax.vmap(task.sample_batch, (0, None))(keys, s)
                                   for s in text.SPLITS})
    batches = sample(jax.random.split(jax.random.PRNGKey(0), 200))
    splits = text.corpus_splits("stdlib_docs")
    for split, batch in batches.items():
        inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
        assert inputs.shape == (200, 3, 5) and inputs.dtype == np.int32
        np.testing.assert_array_equal(inputs[..., 1:], targets[..., :-1])
        windows = np.concatenate([inputs, targets[..., -1:]], -1).reshape(-1, 6)
        haystack = splits[split].astype(np.uint8).tobytes()
        assert all(w.astype(np.uint8).tobytes() in haystack for w in windows)
    # eval windows tile the split: every character but the first is a target exactly once
    x, y = family.eval_windows("test")
    n = x.size
    np.testing.assert_array_equal(np.ravel(x), splits["test"][:n])
    np.testing.assert_array_equal(np.ravel(y), splits["test"][1:n + 1])
    assert len(splits["test"]) - 1 - n < 5
    with pytest.raises(TaskError, match="validation"):
        task.sample_batch(jax.random.PRNGKey(0), "valid")


def test_text_rnn_init_loss_and_adam_lowers_validation_loss():
    family = TextRNNFamily()  # the registered default: GRU 64, windows of 32, batches of 32
    run = adam_run(family, steps=60)
    before, after, losses = run(family.default_cfg(), jax.random.PRNGKey(0))
    # Random logits independent of the target cost log(V) plus ~half their variance.
    assert 0.99 < float(before) / LOG_V < 1.1
    assert abs(float(losses[0]) - float(before)) < 0.1
    # Measured: 4.64 -> 2.55 after 60 steps (unigram entropy of the corpus ~3.1 nats).
    assert float(after) < 0.7 * float(before)
    assert float(losses[-10:].mean()) < 0.75 * float(losses[:10].mean())


# ---------------------------------------------------------------- causal transformer LM

def test_transformer_is_causal_and_layer_norm_matches_formula():
    from tasks.transformer import TextTransformerFamily, layer_norm
    family = TextTransformerFamily(num_layers=2)
    cfg = family.default_cfg()
    params = family.task(cfg).init(jax.random.PRNGKey(0))
    x = jax.random.randint(jax.random.PRNGKey(1), (2, family.seq_len), 0, family.vocab_size)
    y = x.at[:, 20].set((x[:, 20] + 1) % family.vocab_size)   # change position 20 only
    lx, ly = family.logits(cfg, params, x), family.logits(cfg, params, y)
    np.testing.assert_allclose(lx[:, :20], ly[:, :20], rtol=1e-5, atol=1e-6)   # the past ignores it
    assert float(jnp.abs(lx[:, 20:] - ly[:, 20:]).max()) > 1e-3                # the future sees it
    z = np.random.default_rng(0).normal(size=(3, 8))
    g, b = np.linspace(0.5, 2, 8), np.linspace(-1, 1, 8)
    want = g * (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) + b
    np.testing.assert_allclose(layer_norm(jnp.asarray(z), g, b), want, rtol=1e-5, atol=1e-6)


def test_text_transformer_adam_lowers_validation_loss():
    from tasks.transformer import TextTransformerFamily
    family = TextTransformerFamily()
    run = adam_run(family, steps=60)
    before, after, losses = run(family.default_cfg(), jax.random.PRNGKey(0))
    # Measured: 5.03 -> ~2.9 after 60 steps at lr 1e-2 (batch losses 3.68 -> 2.86 over the run).
    assert float(after) < 0.7 * float(before)
    assert float(losses[-10:].mean()) < 0.85 * float(losses[:10].mean())


# ---------------------------------------------------------------- noisy quadratic model

@pytest.mark.parametrize("spectrum", ["geometric", "power_law"])
def test_nqm_gradient_mean_and_variance(spectrum):
    family = NQMFamily(dim=6, spectrum=spectrum)
    cfg = family.default_cfg(cond=300.0, noise_scale=0.3)
    task = family.task(cfg)
    h = np.asarray(family.curvatures(cfg), np.float64)
    x = {"x": jnp.array([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])}
    n = 40_000

    @jax.jit
    def grads_and_losses(keys):
        batches = jax.vmap(task.sample_batch)(keys)
        loss, g = jax.vmap(jax.value_and_grad(task.loss), (None, None, 0))(x, None, batches)
        return batches, g["x"], loss

    b, g, losses = (np.asarray(a, np.float64)
                    for a in grads_and_losses(jax.random.split(jax.random.PRNGKey(0), n)))
    hx = h * np.asarray(x["x"])
    # exactly: grad = h x + sqrt(s h) b for each batch b
    np.testing.assert_allclose(g, hx + np.sqrt(0.3 * h) * b, rtol=1e-5, atol=1e-6)
    # Monte Carlo: mean h x (zero-mean noise), variance s h per coordinate
    np.testing.assert_allclose(g.mean(0), hx, atol=4 * np.sqrt(0.3 * h.max() / n))
    np.testing.assert_allclose(g.var(0), 0.3 * h, rtol=0.04)
    np.testing.assert_allclose(np.cov(g.T), np.diag(0.3 * h), atol=0.04 * 0.3)
    clean = float(task.eval_loss(x))
    np.testing.assert_allclose(clean, 0.5 * np.sum(h * np.asarray(x["x"]) ** 2), rtol=1e-6)
    noise_std = np.sqrt(0.3 * np.sum(h * np.asarray(x["x"]) ** 2))
    assert abs(losses.mean() - clean) < 4 * noise_std / np.sqrt(n)
    np.testing.assert_allclose(losses.std(), noise_std, rtol=0.03)
    # the curves' measure: the exact expectation of the batch loss
    np.testing.assert_allclose(float(task.expected_loss(x)), clean, rtol=1e-6)


def test_nqm_spectrum_matches_condition_number():
    for dim in (2, 7, 100):
        for cond in (1.0, 10.0, 1e4):
            for spectrum in ("geometric", "power_law"):
                h = np.asarray(curvatures(dim, cond, spectrum), np.float64)
                assert h[0] == pytest.approx(1.0) and np.all(np.diff(h) <= 0)
                np.testing.assert_allclose(h.max() / h.min(), cond, rtol=1e-4)
            geo = np.asarray(curvatures(dim, cond, "geometric"), np.float64)
            np.testing.assert_allclose(geo, cond ** (-np.arange(dim) / (dim - 1)), rtol=1e-5)
            power = np.asarray(curvatures(dim, cond, "power_law"), np.float64)
            p = math.log(cond) / math.log(dim)
            np.testing.assert_allclose(power, np.arange(1, dim + 1.0) ** (-p), rtol=1e-5)
    np.testing.assert_array_equal(curvatures(1, 50.0), [1.0])
    with pytest.raises(TaskError, match="power_law"):
        curvatures(4, 10.0, "linear")


def test_nqm_sampling_normaliser_and_noise_control():
    family = NQMFamily(dim=50, min_cond=10.0, max_cond=1e4, min_noise=1e-3, max_noise=1.0)

    @jax.jit
    def population(keys):
        def one(key):
            cfg = family.sample(key)
            task = family.task(cfg)
            params = task.init(key)
            return cfg, params["x"], task.normalizer(task.eval_loss(params)), \
                family.curvatures(cfg)
        return jax.vmap(one)(keys)

    cfgs, x0, norm0, h = population(jax.random.split(jax.random.PRNGKey(0), 4000))
    cond, noise = np.asarray(cfgs["cond"]), np.asarray(cfgs["noise_scale"])
    assert cond.min() >= 10 * (1 - 1e-5) and cond.max() <= 1e4 * (1 + 1e-5)
    assert noise.min() >= 1e-3 * (1 - 1e-5) and noise.max() <= 1.0 + 1e-5
    # log-uniform: log values uniform, median in the middle
    assert abs(np.median(np.log10(cond)) - 2.5) < 0.08
    assert abs(np.median(np.log10(noise)) + 1.5) < 0.08
    assert abs(np.mean(np.log10(cond) < 1.75) - 0.25) < 0.03
    np.testing.assert_allclose(np.max(h, 1) / np.min(h, 1), cond, rtol=1e-4)
    # init x = +-1: the normalised noise-free initial loss is exactly 1 for every task
    assert set(np.unique(np.asarray(x0))) == {-1.0, 1.0}
    np.testing.assert_allclose(norm0, 1.0, rtol=1e-5)
    # noise_scale 0: every batch loss is the clean loss; the noise is sqrt(s) times larger
    x = {"x": jnp.linspace(-1.0, 2.0, 50)}
    batch = family.task(family.default_cfg()).sample_batch(jax.random.PRNGKey(1))
    quiet = family.task(family.default_cfg(cond=100.0, noise_scale=0.0))
    np.testing.assert_allclose(quiet.loss(x, None, batch), quiet.eval_loss(x), rtol=1e-6)
    dev = [family.task(family.default_cfg(100.0, s)).loss(x, None, batch) - quiet.eval_loss(x)
           for s in (0.01, 0.04)]
    np.testing.assert_allclose(dev[1], 2 * dev[0], rtol=1e-4)
    assert family.default_cfg()["cond"] == pytest.approx(316.2278)


def test_bad_arguments_raise_task_error():
    for kwargs in ({"dim": 0}, {"spectrum": "flat"}, {"min_cond": 0.5}, {"min_noise": 0.0},
                   {"min_cond": 10.0, "max_cond": 5.0}):
        with pytest.raises(TaskError, match="nqm"):
            NQMFamily(**kwargs)
    with pytest.raises(TaskError):
        NQMFamily().default_cfg(cond=0.5)
    with pytest.raises(TaskError):
        NQMFamily().default_cfg(noise_scale=-1.0)
    for kwargs in ({"cell": "transformer"}, {"hidden_size": 0}, {"seq_len": 10 ** 6},
                   {"activations": ("relu",)}, {"min_init_scale": 0.0},
                   {"corpus": "wikipedia"}):
        with pytest.raises(TaskError):
            TextRNNFamily(**kwargs)
    with pytest.raises(TaskError, match="soft_sign"):
        TextRNNFamily(activations=("tanh",)).default_cfg("soft_sign")


# ---------------------------------------------------------------- populations

def test_nqm_vmapped_population_matches_python_loop():
    family = NQMFamily(dim=12, spectrum="power_law")
    keys = jax.random.split(jax.random.PRNGKey(5), 6)

    def init_and_loss(key):
        cfg = family.sample(key)
        task = family.task(cfg)
        k_init, k_batch = jax.random.split(jax.random.fold_in(key, 1))
        params = task.init(k_init)
        batch = task.sample_batch(k_batch)
        loss, grads = jax.value_and_grad(task.loss)(params, k_batch, batch)
        return cfg, params, loss, grads, task.eval_loss(params, "test")

    population = jax.jit(jax.vmap(init_and_loss))(keys)
    cfgs = population[0]
    for leaf in jax.tree.leaves(cfgs):  # every cfg field varies across the population
        assert len(np.unique(np.asarray(leaf))) > 1
    single = jax.jit(init_and_loss)
    for i in range(len(keys)):
        alone = single(keys[i])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-6),
                     population, alone)
