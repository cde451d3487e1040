"""Test data and independent numpy (float64) oracles shared by the architecture tests.

``P``, ``G1``, ``G2``: a small parameter tree (a matrix, a vector, a scalar) and two gradients;
each architecture's tests extend them with the leaves they need. The oracles re-implement the
formulas of the module docstrings without JAX: LOLv2 inputs, the step MLP, an LSTM cell.
"""
import jax
import jax.numpy as jnp
import numpy as np

KEY = jax.random.PRNGKey(0)
DECAYS = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])                 # LOLv2 momentum decays
SCALES = np.array([1, 3, 10, 30, 100, 300, 1000, 3000, 1e4, 3e4, 1e5])  # time-feature scales

P = {"w": np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32),
     "b": np.array([0.1, -0.2], np.float32),
     "s": np.array(3.0, np.float32)}
G1 = {"w": np.array([[1.0, -2.0], [0.5, 0.0], [3.0, -1.0]], np.float32),
      "b": np.array([-0.3, 0.6], np.float32),
      "s": np.array(-2.0, np.float32)}
G2 = {"w": np.array([[-0.5, 1.0], [2.0, 1.0], [0.0, 0.5]], np.float32),
      "b": np.array([0.2, 0.4], np.float32),
      "s": np.array(0.7, np.float32)}


def take(tree, i):
    """Member ``i`` of a batched pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def stack(*trees):
    """A batched pytree with the given members (numpy arrays)."""
    return jax.tree.map(lambda *a: np.stack(a), *trees)


# ------------------------------------------------------------------ numpy oracles
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_momenta(grads, decays=DECAYS):
    """``m_k <- d_k m_k + (1 - d_k) g`` from zero over one tensor's gradients ``grads``."""
    m = np.zeros(np.shape(grads[0]) + (len(decays),))
    for g in grads:
        m = decays * m + (1 - decays) * np.asarray(g, np.float64)[..., None]
    return m


def np_lolv2(grads, p, t, decays=DECAYS, scales=SCALES):
    """LOLv2 inputs of one tensor after its gradients ``grads`` (the last is this step's) at
    iteration ``t``: ``(inputs p.shape + (2 + K + len(scales),), momenta)``."""
    m = np_momenta(grads, decays)
    raw = np.concatenate([np.asarray(grads[-1], np.float64)[..., None],
                          np.asarray(p, np.float64)[..., None], m], axis=-1)
    axes = tuple(range(raw.ndim - 1))
    norm = raw / np.sqrt(1e-5 + np.mean(raw ** 2, axis=axes, keepdims=True))
    tf = np.broadcast_to(np.tanh(t / scales - 1.0), np.shape(p) + (len(scales),))
    return np.concatenate([norm, tf], axis=-1), m


def np_mlp(mlp, x):
    """The step MLP (ReLU between layers) on the trailing axis; returns ``(d, m)``."""
    n = len(mlp)
    for i in range(n):
        layer = mlp[f"linear_{i}"]
        x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return x[..., 0], x[..., 1]


def np_lstm_cell(params, x, h, c):
    """One LSTM cell (gate order i, f, g, o) on rows ``x``; returns ``(h', c')``."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    z = x @ w["wx"] + h @ w["wh"] + w["b"]
    zi, zf, zg, zo = np.split(z, 4, axis=-1)
    c = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zg)
    return sigmoid(zo) * np.tanh(c), c


# ------------------------------------------------------------------ tasks and hand-made thetas
def linear_regression(outputs=None):
    """``(loss, zero params)`` of a least-squares problem with 64 rows and 5 inputs (one output,
    or ``outputs`` of them)."""
    kx, kw = jax.random.split(jax.random.PRNGKey(42))
    x = jax.random.normal(kx, (64, 5))
    tail = () if outputs is None else (outputs,)
    y = x @ jax.random.normal(kw, (5,) + tail) + 0.5

    def loss(p):
        return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return loss, {"w": jnp.zeros((5,) + tail), "b": jnp.zeros(tail)}


def descent_mlp(mlp, channel, sign=1.0):
    """Set a zero step MLP (numpy arrays, edited in place) to output d = sign * (input
    ``channel``), m = 0: d = relu(x) - relu(-x) = x exactly."""
    mlp["linear_0"]["w"][channel, :2] = [1.0, -1.0]
    mlp["linear_1"]["w"][0, 0] = mlp["linear_1"]["w"][1, 1] = 1.0
    mlp["linear_2"]["w"][:2, 0] = [sign, -sign]
    return mlp


def descent_theta(lopt, channel, sign=1.0, keep=()):
    """theta of an MLP-headed optimizer whose step is ``step_mult * sign * x[channel]``: all
    zero (the entries named in ``keep`` as initialised) but the step MLP (:func:`descent_mlp`)."""
    init = jax.device_get(lopt.init(KEY))
    theta = {k: (v if k in keep else jax.tree.map(np.zeros_like, v)) for k, v in init.items()}
    descent_mlp(theta["mlp"], channel, sign)
    return theta


def quadratic_to_target():
    """``(loss, zero params)`` of ``sum (p - target)^2`` over a matrix and a scalar."""
    target = {"w": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "s": np.float32(-1.0)}

    def loss(p):
        return sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)

    return loss, jax.tree.map(np.zeros_like, target)


def sign_descent_theta(lopt, sign=1.0):
    """theta of the coordinatewise LSTM whose output is ~ sign * sign(g): every layer copies
    its input channel 1 (sign(g) on the large branch) into the cell and forgets the past."""
    theta = jax.tree.map(np.zeros_like, jax.device_get(lopt.init(KEY)))
    H = lopt.config.hidden_size
    for layer, prm in theta["lstm"].items():
        b = prm["b"]
        b[:H], b[H:2 * H], b[3 * H:] = 10.0, -10.0, 10.0    # input and output open, no memory
        row = 1 if layer == "layer_0" else 0                # sign channel / first unit
        prm["wx"][row, 2 * H] = 5.0                         # unit 0 cell input
    theta["head"]["w"][0, 0] = sign / np.tanh(np.tanh(5.0 * np.tanh(np.tanh(5.0))))
    return theta


def np_iqm(scores):
    """Interquartile mean by hand: sort all n entries, drop floor(n/4) from each end, average."""
    v = np.sort(np.asarray(scores, dtype=float).ravel())
    k = len(v) // 4
    return v[k:len(v) - k].mean()


def np_stratified_bootstrap(scores, stat, reps, seed=0, size=0.95):
    """Percentile interval of ``stat`` over replicates that resample, for each task (column)
    separately, its runs (rows) with replacement."""
    s = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    runs, tasks = s.shape
    reps_stats = []
    for _ in range(reps):
        idx = rng.integers(0, runs, size=(runs, tasks))
        reps_stats.append(stat(np.take_along_axis(s, idx, axis=0)))
    lo, hi = np.quantile(np.asarray(reps_stats), [(1 - size) / 2, (1 + size) / 2], axis=0)
    return lo, hi
