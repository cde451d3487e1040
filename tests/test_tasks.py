"""Tasks, families, datasets and the registry (CPU, no network, isolated data dir)."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adam_helper import adam_run

import tasks
from tasks import datasets
from tasks.quadratic import eigenvalues


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lopt_data")


@pytest.fixture(autouse=True)
def _isolated_data_dir(session_data_dir, monkeypatch):
    monkeypatch.setenv("LOPT_DATA_DIR", str(session_data_dir))


def reference_logits(params, x, activation):
    """The MLP written out: hidden_i = act(h W_i + b_i), logits = h W + b."""
    h, i = np.asarray(x), 0
    while f"hidden_{i}" in params:
        h = np.asarray(tasks.ACTIVATIONS[activation](h @ params[f"hidden_{i}"]["w"]
                                                     + params[f"hidden_{i}"]["b"]))
        i += 1
    return h @ np.asarray(params["logits"]["w"]) + np.asarray(params["logits"]["b"])


def reference_xent(logits, y):
    logits = logits - logits.max(-1, keepdims=True)
    return np.mean(np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(y)), y])


# ---------------------------------------------------------------- registry and training

@pytest.mark.parametrize("name", sorted(tasks.list_tasks()))
def test_registered_task_trains(name):
    task, family, cfg = tasks.get_task_and_family(name)
    assert task.name == name and tasks.get_task(name).name == name
    assert tasks.family_name_of_task(name) == family.name
    before, after, losses = adam_run(family)(cfg, jax.random.PRNGKey(0))
    assert np.all(np.isfinite(losses))
    # Normalised initial loss: ~1 for classifiers (uniform prediction over 10 classes); for
    # quadratics 1 only in expectation (one 10-d draw varies; see the Monte Carlo test).
    lo, hi = (0.3, 3.0) if name.startswith("quadratic") else (0.9, 1.1)
    assert lo < float(task.normalizer(before)) < hi
    # Calibrated over seeds 0-5 (worst: MNIST-1D tanh): full-split loss ratio <= 0.75,
    # mean of the last 10 batch losses / first 10 <= 0.86. Digits reach ~0.1, quadratics ~0.6.
    assert float(after) < 0.85 * float(before)
    assert float(losses[-10:].mean()) < 0.92 * float(losses[:10].mean())


def test_registry_lists_and_family_of_task():
    fams, named = tasks.list_families(), tasks.list_tasks()
    assert {"quadratic", "mnist1d_mlp", "digits_mlp"} <= set(fams)
    assert {"quadratic_10d", "mnist1d_mlp_relu", "mnist1d_mlp_tanh", "digits_mlp_relu",
            "digits_mlp_tanh"} <= set(named)
    for desc in [*fams.values(), *named.values()]:
        assert isinstance(desc, str) and desc and "\n" not in desc
    for name in named:
        assert tasks.family_name_of_task(name) in fams
    task, family, cfg = tasks.get_task_and_family("digits_mlp_tanh")
    assert family.activations[int(cfg["activation"])] == "tanh"
    assert float(cfg["init_scale"]) == 1.0


def test_unknown_names_and_kwargs_raise_task_error():
    with pytest.raises(tasks.TaskError, match="quadratic"):
        tasks.get_family("no_such_family")
    with pytest.raises(tasks.TaskError, match="mnist1d_mlp_relu"):
        tasks.get_task("no_such_task")
    with pytest.raises(tasks.TaskError, match="no_such_task"):
        tasks.family_name_of_task("no_such_task")
    with pytest.raises(tasks.TaskError, match="hidden_sizes"):
        tasks.get_family("mnist1d_mlp", widths=(8,))
    with pytest.raises(tasks.TaskError, match="dataset"):  # fixed by the family's name
        tasks.get_family("digits_mlp", dataset="mnist1d")
    bad = [("quadratic", {"dim": 0}), ("quadratic", {"min_cond": 10.0, "max_cond": 2.0}),
           ("quadratic", {"noise": -1.0}), ("digits_mlp", {"hidden_sizes": [8, 0]}),
           ("digits_mlp", {"activations": ("relu", "nope")}), ("digits_mlp", {"batch_size": 0}),
           ("digits_mlp", {"min_init_scale": 0.0})]
    for name, kwargs in bad:
        with pytest.raises(tasks.TaskError):
            tasks.get_family(name, **kwargs)
    task = tasks.get_task("digits_mlp_relu")
    with pytest.raises(tasks.TaskError, match="validation"):
        task.sample_batch(jax.random.PRNGKey(0), "valid")


def test_family_kwargs_from_json_lists():
    family = tasks.get_family("digits_mlp", hidden_sizes=[16], batch_size=8, activations=["tanh"])
    params = jax.eval_shape(family.task(family.default_cfg()).init, jax.random.PRNGKey(0))
    assert family.activations == ("tanh",) and family.hidden_sizes == (16,)
    assert params["hidden_0"]["w"].shape == (64, 16)
    assert params["logits"]["w"].shape == (16, 10)


# ---------------------------------------------------------------- families: seeds and vmap

@pytest.mark.parametrize("name", sorted(tasks.list_families()))
def test_family_reproducible_and_vmappable(name):
    family = tasks.get_family(name)
    assert tasks.get_family(name) is family  # cached: compiled functions are shared
    keys = jax.random.split(jax.random.PRNGKey(3), 6)
    sample = jax.jit(jax.vmap(family.sample))
    cfgs, again = sample(keys), sample(keys)
    one = family.sample(keys[2])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), cfgs, again)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[2], b, rtol=1e-6), cfgs, one)
    assert all(len(np.unique(np.asarray(leaf), axis=0)) > 1 for leaf in jax.tree.leaves(cfgs))

    def init_and_loss(cfg, key):
        task = family.task(cfg)
        k_init, k_batch = jax.random.split(key)
        params, batch = task.init(k_init), task.sample_batch(k_batch)
        return params, batch, task.loss(params, key, batch)

    params, batches, losses = jax.jit(jax.vmap(init_and_loss))(cfgs, keys)
    assert losses.shape == (6,) and np.all(np.isfinite(losses))
    for i in (0, 5):  # each member of the vmapped population equals its task built alone
        cfg, p, batch = (jax.tree.map(lambda a: a[i], t) for t in (cfgs, params, batches))
        alone = family.task(cfg).init(jax.random.split(keys[i])[0])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     p, alone)
        if name == "quadratic":
            ref = 0.5 * np.sum(cfg["eigs"] * (p["x"] - cfg["centre"] - batch) ** 2)
        elif isinstance(family, tasks.MLPClassifierFamily):
            act = family.activations[int(cfg["activation"])]
            ref = reference_xent(reference_logits(p, batch["x"], act), np.asarray(batch["y"]))
        else:   # other kinds have formula tests in their own files: here, vmapped == alone
            ref = family.task(cfg).loss(alone, keys[i], batch)
        np.testing.assert_allclose(losses[i], ref, rtol=1e-4)


def test_periodic_eval_keys_fixed_and_disjoint_from_training():
    a, b = tasks.periodic_eval_keys(4), tasks.periodic_eval_keys(4)
    np.testing.assert_array_equal(a, b)
    assert tasks.PERIODIC_EVAL_SEED == 10_000_019
    train = jax.random.split(jax.random.PRNGKey(0), 4)
    assert not np.any(np.all(np.asarray(a)[:, None] == np.asarray(train)[None], -1))


# ---------------------------------------------------------------- quadratic

def test_quadratic_loss_matches_formula():
    family = tasks.QuadraticFamily(dim=3, noise=0.5)
    cfg = {"centre": jnp.array([1.0, -2.0, 0.5]), "eigs": eigenvalues(3, 100.0)}
    np.testing.assert_allclose(cfg["eigs"], [1.0, 0.1, 0.01], rtol=1e-6)
    task = family.task(cfg)
    x, b = jnp.array([0.0, 1.0, 2.0]), jnp.array([0.5, 0.0, -1.0])
    # 0.5 * (1 * (0-1-0.5)^2 + 0.1 * (1+2-0)^2 + 0.01 * (2-0.5+1)^2)
    expected = 0.5 * (2.25 + 0.9 + 0.0625)
    np.testing.assert_allclose(task.loss({"x": x}, None, b), expected, rtol=1e-6)
    np.testing.assert_allclose(task.normalizer(expected), expected / 1.11, rtol=1e-6)
    # eval_loss is the expectation over the batch noise: 0.5 * sum h ((x-c)^2 + noise^2)
    np.testing.assert_allclose(task.eval_loss({"x": x}),
                               0.5 * (1.0 + 0.9 + 0.0225 + 0.25 * 1.11), rtol=1e-6)
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    mc = jax.jit(jax.vmap(lambda k: task.loss({"x": x}, k, task.sample_batch(k))))(keys).mean()
    np.testing.assert_allclose(mc, task.eval_loss({"x": x}), rtol=0.02)
    np.testing.assert_allclose(task.expected_loss({"x": x}), task.eval_loss({"x": x}), rtol=1e-6)


def test_quadratic_sampled_spectrum_and_normaliser():
    family = tasks.QuadraticFamily(dim=8, min_cond=2.0, max_cond=50.0, noise=0.1)

    @jax.jit
    def population(key):
        """4000 sampled tasks and the normalised loss of each at its random init."""
        k_cfg, k_run = jax.random.split(key)
        cfgs = jax.vmap(family.sample)(jax.random.split(k_cfg, 4000))

        def normalised_initial(cfg, key):
            task = family.task(cfg)
            k1, k2 = jax.random.split(key)
            return task.normalizer(task.loss(task.init(k1), k2, task.sample_batch(k2)))

        return cfgs, jax.vmap(normalised_initial)(cfgs, jax.random.split(k_run, 4000))

    cfgs, vals = population(jax.random.PRNGKey(1))
    eigs = np.asarray(cfgs["eigs"])
    np.testing.assert_allclose(eigs[:, 0], 1.0)
    cond = 1.0 / eigs[:, -1]
    assert cond.min() >= 2.0 * (1 - 1e-5) and cond.max() <= 50.0 * (1 + 1e-5)
    # log-uniform: median of log(cond) near the middle of [log 2, log 50]
    assert abs(np.median(np.log(cond)) - 0.5 * np.log(100.0)) < 0.1
    ratios = eigs[:, 1:] / eigs[:, :-1]  # geometric spacing
    np.testing.assert_allclose(ratios, ratios[:, :1] * np.ones_like(ratios), rtol=1e-4)
    # E[loss0] = (1 + noise^2/2) * sum(h) for every conditioning
    np.testing.assert_allclose(vals.mean(), 1.005, rtol=0.05)
    low, high = cond < 5, cond > 20
    np.testing.assert_allclose(vals[low].mean(), vals[high].mean(), rtol=0.12)


# ---------------------------------------------------------------- MLP family

def test_mlp_cfg_controls_activation_and_init_scale():
    family = tasks.get_family("digits_mlp")
    key = jax.random.PRNGKey(0)
    p1 = family.task(family.default_cfg("relu", 1.0)).init(key)
    p2 = family.task(family.default_cfg("tanh", 2.0)).init(key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 2.0 * a, rtol=1e-6), p1, p2)
    # w * sqrt(fan_in) ~ N(0, 1) truncated to [-2, 2] (std 0.8796), b = 0
    t = np.concatenate([np.ravel(p["w"] * np.sqrt(p["w"].shape[0])) for p in p1.values()])
    assert np.abs(t).max() <= 2.0 + 1e-5 and abs(t.std() - 0.8796) < 0.04 and abs(t.mean()) < 0.05
    assert all(np.all(p["b"] == 0) for p in p1.values())
    x = family.data["test"][0][:5]
    outs = []
    for act in family.activations:
        outs.append(np.asarray(family.logits(family.default_cfg(act), p1, x)))
        np.testing.assert_allclose(outs[-1], reference_logits(p1, x, act), rtol=1e-5, atol=1e-6)
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(outs, outs[1:]))
    with pytest.raises(tasks.TaskError, match="sigmoid"):
        family.default_cfg("sigmoid")


def test_mlp_eval_loss_accuracy_and_batches():
    family = tasks.get_family("digits_mlp")
    cfg = family.default_cfg("tanh")
    task = family.task(cfg)
    params = task.init(jax.random.PRNGKey(0))
    x, y = family.data["validation"]
    logits = reference_logits(params, x, "tanh")
    np.testing.assert_allclose(task.eval_loss(params, "validation"),
                               reference_xent(logits, np.asarray(y)), rtol=1e-5)
    np.testing.assert_allclose(family.accuracy(cfg, params, "validation"),
                               np.mean(np.argmax(logits, -1) == y), rtol=1e-6)
    np.testing.assert_allclose(task.normalizer(np.log(10.0)), 1.0, rtol=1e-6)
    batch = jax.jit(task.sample_batch, static_argnums=1)(jax.random.PRNGKey(1), "test")
    assert batch["x"].shape == (family.batch_size, 64) and batch["y"].dtype == jnp.int32
    xt = np.asarray(family.data["test"][0])  # every batch row is a test-split row
    assert all(np.any(np.all(xt == row, axis=1)) for row in np.asarray(batch["x"]))


# ---------------------------------------------------------------- datasets

def _rows(x):
    return {r.tobytes() for r in np.asarray(x)}


@pytest.mark.parametrize("name,sizes", [("mnist1d", (3500, 500, 1000)),
                                        ("digits", (1197, 300, 300))])
def test_embedded_dataset_splits(name, sizes):
    ds = tasks.load_dataset(name)
    assert tuple(ds.sizes().values()) == sizes
    assert ds.num_classes == 10 and ds.x_train.shape[1] == ds.num_features
    for split in datasets.SPLITS:
        x, y = ds.split(split)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert y.min() >= 0 and y.max() < 10 and len(np.unique(y)) == 10
    assert not _rows(ds.x_train) & _rows(ds.x_test)
    assert not _rows(ds.x_train) & _rows(ds.x_validation)
    assert not _rows(ds.x_validation) & _rows(ds.x_test)
    assert tasks.load_dataset(name) is ds  # in-process cache


def test_digits_is_sklearn_digits_scaled():
    from sklearn.datasets import load_digits
    ref = load_digits()
    ds = tasks.load_dataset("digits")
    x = np.concatenate([ds.x_train, ds.x_validation, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_validation, ds.y_test])
    order, ref_order = np.lexsort(x.T), np.lexsort(ref.data.T)
    np.testing.assert_allclose(x[order], ref.data[ref_order] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(y[order], ref.target[ref_order])


def test_mnist1d_statistics_and_disk_cache(session_data_dir):
    ds = tasks.load_dataset("mnist1d")
    x = np.concatenate([ds.x_train, ds.x_validation, ds.x_test])
    assert ds.input_shape == (40,)
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1.0) < 1e-3  # make_dataset standardises
    cache = session_data_dir / "mnist1d" / "1.0.0" / datasets.CACHE_FILE
    assert cache.exists()
    datasets.clear_cache()
    t0 = time.perf_counter()
    again = tasks.load_dataset("mnist1d")
    assert time.perf_counter() - t0 < 0.5
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_missing_tfds_dataset_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(tasks.DatasetNotFoundError) as err:
        tasks.load_dataset("mnist")
    with pytest.raises(tasks.DatasetNotFoundError):
        tasks.get_family("mlp", dataset="fashion_mnist")
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert "download_and_prepare" in msg and "LOPT_DATA_DIR" in msg and "mnist1d" in msg
    assert issubclass(tasks.DatasetNotFoundError, tasks.TaskError)
    # A copy in another file format is reported as such.
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    (tmp_path / "mnist" / "3.0.1" / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(tasks.DatasetNotFoundError, match="not in array_record format"):
        tasks.load_dataset("mnist")
    with pytest.raises(tasks.TaskError, match="digits"):
        tasks.load_dataset("../etc")


def test_tfds_array_record_image_dataset_is_read(tmp_path):
    import tensorflow_datasets as tfds
    from PIL import Image
    from tasks.tfds_builders import quiet

    class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 40),
                    "test": self._generate_examples(40, 50)}

        def _generate_examples(self, lo, hi):
            for i in range(lo, hi):  # PIL images: encoded to PNG without TensorFlow
                pixels = np.full((28, 28), 5 * i, np.uint8)
                pixels[0, 0] = 255
                yield i, {"image": Image.fromarray(pixels), "label": i % 10}

    with quiet():
        TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ds = tasks.load_dataset("tiny_images", data_dir=tmp_path)
    assert ds.sizes() == {"train": 36, "validation": 4, "test": 10}
    assert ds.input_shape == (28, 28, 1) and ds.x_train.shape == (36, 784)
    assert ds.num_classes == 10 and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train[:, 0], 1.0)  # scaled to [0, 1]
    ids = {}
    for split in datasets.SPLITS:
        x, y = ds.split(split)
        i = np.rint(x[:, 1] * 255 / 5).astype(int)
        np.testing.assert_array_equal(y, i % 10)
        ids[split] = set(i)
    assert ids["test"] == set(range(40, 50))
    assert ids["train"] | ids["validation"] == set(range(40))
    assert not ids["train"] & ids["validation"]
    assert (tmp_path / "tiny_images" / "1.0.0" / datasets.CACHE_FILE).exists()
    family = tasks.get_family("mlp", dataset="tiny_images", data_dir=str(tmp_path))
    assert family.name == "tiny_images_mlp" and family.num_features == 784
    assert family.split_sizes == ds.sizes()
    # Resized for a small model: constant images (all but one pixel) stay constant.
    small = tasks.load_dataset("tiny_images", data_dir=tmp_path, image_size=(8, 8))
    assert small.input_shape == (8, 8, 1) and small.x_test.shape == (10, 64)
    i = np.rint(ds.x_test[:, 1] * 255 / 5)
    np.testing.assert_allclose(small.x_test[:, -1], i * 5 / 255, atol=1e-6)   # far corner
    assert np.all(small.x_test[:, 0] > small.x_test[:, -1])                   # the bright pixel
    fam8 = tasks.get_family("mlp", dataset="tiny_images", data_dir=str(tmp_path), image_size=[8, 8])
    assert fam8.num_features == 64
    with pytest.raises(tasks.TaskError, match="not images"):
        tasks.load_dataset("mnist1d", image_size=(8, 8))
