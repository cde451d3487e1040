"""A parametric family of image-classifier MLPs: depth, widths, activation, init scale,
batch size and dataset are all *sampled*, yet every sample shares one compiled function.

Why: a learned optimizer meta-trained on one architecture overfits to it; sampling the
architecture makes the meta-training distribution broad. To keep a population vmappable
(one jit, one compile), everything that varies is an array in ``cfg`` and the shapes are a
static maximum, with 0/1 masks selecting the sampled network inside it.

Static (constructor): datasets D_1..D_n (each flattened to F_k features, K_k classes, padded
to F = max F_k inputs and K = max K_k logits), max_depth L, width choices (W = max), batch
choices (B = max), activation names, init-scale range [s_min, s_max].

cfg (all arrays; sampled independently):
    dataset     int32  ~ U{0..n-1}                 index into ``datasets``
    depth       int32  ~ U{1..L}                   number of hidden layers d
    widths      int32[L]: widths[i] ~ U(width choices) for i < d, 0 for i >= d
    activation  int32  ~ U{0..len(activations)-1}
    init_scale  float32, log(init_scale) ~ U[log s_min, log s_max]
    batch_size  int32  ~ U(batch choices)           b

Masked network (x zero-padded to F features, m_i = [unit j < widths[i]] in {0,1}^W):
    h_0 = act(x W_0 + b_0) * m_0
    h_i = act(h_{i-1} W_i + b_i) * m_i   if i < d,   else h_i = h_{i-1}  (identity)
    logits = h_{L-1} W_out + b_out, then logits[c] = -inf for classes c >= K_dataset.
With these masks the logits equal those of the plain MLP of widths (widths[0..d-1]) on the
unpadded input, *whatever* values the padded parameters hold, and the padded parameters get
exactly zero gradient. At init the padded entries are 0 and the live ones are
init_scale * t / sqrt(fan_in) with t ~ N(0, 1) truncated to [-2, 2] (as tasks.mlp), fan_in the
*sampled* fan-in, biases 0: the padded init is the plain network's init, zero-padded.

Loss: mean cross-entropy over the first b examples of a B-row batch (a 0/1 example mask);
normaliser = loss / log(K_dataset) (1 for a uniform prediction). ``eval_loss(params, split)``
is the mean over the sampled dataset's whole split (masked over the padded split length).

Consequences for learned optimizers: padded parameters always see zero gradients (and stay 0
under Adam/SGD); per-tensor statistics (means, RMS, norms over a tensor) include the padded
entries, so e.g. a gradient RMS is sqrt(live fraction) times that of the plain network.
Cost: every sample costs what the largest one does (shapes are the static maximum); under
vmap the activation switch evaluates all candidate activations. See docs/tasks.md.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.base import Task, TaskError, check_activations, check_init_range, is_int, is_number
from tasks.classifier import DataFamily
from tasks.datasets import SPLITS, Dataset, load_dataset
from tasks.mlp import ACTIVATIONS

DEFAULT_ACTIVATIONS = tuple(ACTIVATIONS)  # relu tanh gelu silu sigmoid elu softplus leaky_relu
_MASKED_LOGIT = -jnp.inf


def _int_tuple(v, what, name="image_mlp"):
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    if not v or not all(is_int(x) and x >= 1 for x in v):
        raise TaskError(f"{name}: {what} must be a non-empty list of positive integers, got {v!r}")
    return tuple(sorted(set(int(x) for x in v)))


class ParametricImageMLPFamily(DataFamily):
    """MLP classifiers of sampled depth/widths/activation/init scale/batch size/dataset.

    ``datasets`` holds names for ``tasks.datasets.load_dataset`` (or ``Dataset`` objects);
    see the module docstring for the cfg and its distribution.
    """

    name = "image_mlp"

    def __init__(self, datasets=("mnist1d", "digits"), max_depth: int = 3,
                 widths=(16, 32, 64), batch_sizes=(32, 64, 128),
                 activations=DEFAULT_ACTIVATIONS, min_init_scale: float = 0.5,
                 max_init_scale: float = 2.0, data_dir: str | None = None):
        if isinstance(datasets, (str, Dataset)):
            datasets = (datasets,)
        datasets = tuple(datasets) if isinstance(datasets, (list, tuple)) else ()
        if not datasets or not all(isinstance(d, (str, Dataset)) for d in datasets):
            raise TaskError("image_mlp: datasets must be a non-empty list of dataset names "
                            "(e.g. ['mnist1d', 'digits'])")
        if not (is_int(max_depth) and max_depth >= 1):
            raise TaskError(f"image_mlp: max_depth must be a positive integer, got {max_depth!r}")
        self.width_choices = _int_tuple(widths, "widths")
        self.batch_choices = _int_tuple(batch_sizes, "batch_sizes")
        activations = check_activations("image_mlp", activations, ACTIVATIONS, distinct=True)
        check_init_range("image_mlp", min_init_scale, max_init_scale)
        loaded = [d if isinstance(d, Dataset) else load_dataset(d, data_dir) for d in datasets]
        names = [d.name for d in loaded]
        if len(set(names)) != len(names):
            raise TaskError(f"image_mlp: datasets must be distinct, got {names}")
        self.datasets, self.max_depth = tuple(names), int(max_depth)
        self.activations = activations
        self.min_init_scale, self.max_init_scale = float(min_init_scale), float(max_init_scale)
        # Static maxima: the shapes every sample shares.
        self.width, self.batch_size = max(self.width_choices), max(self.batch_choices)
        self.features = tuple(d.num_features for d in loaded)
        self.classes = tuple(d.num_classes for d in loaded)
        self.num_features, self.num_classes = max(self.features), max(self.classes)
        self.split_sizes = {s: tuple(d.sizes()[s] for d in loaded) for s in SPLITS}
        # Data on device: per split, all datasets concatenated (inputs zero-padded to F).
        self.data, self._offsets = {}, {}
        for s in SPLITS:
            xs = [np.pad(d.split(s)[0], ((0, 0), (0, self.num_features - d.num_features)))
                  for d in loaded]
            self.data[s] = (jnp.asarray(np.concatenate(xs), jnp.float32),
                            jnp.asarray(np.concatenate([d.split(s)[1] for d in loaded]),
                                        jnp.int32))
            self._offsets[s] = jnp.asarray(np.cumsum([0, *self.split_sizes[s][:-1]]), jnp.int32)
        self._sizes = {s: jnp.asarray(v, jnp.int32) for s, v in self.split_sizes.items()}
        self._features = jnp.asarray(self.features, jnp.int32)
        self._classes = jnp.asarray(self.classes, jnp.int32)
        # Jitted once per family (inlined when traced inside a caller's jit or vmap).
        self._init = jax.jit(self._masked_init)
        self._logits = jax.jit(self._forward)

    # ------------------------------------------------------------------ shapes and masks

    def param_shapes(self) -> dict[str, tuple[int, int]]:
        """{module: (fan_in, fan_out)} of the static (maximal) weight matrices."""
        F, W, K, L = self.num_features, self.width, self.num_classes, self.max_depth
        shapes = {"hidden_0": (F, W)}
        shapes.update({f"hidden_{i}": (W, W) for i in range(1, L)})
        shapes["logits"] = (W, K)
        return shapes

    def _live(self, cfg):
        """{module: (row mask, col mask, true fan_in)} of the sampled network."""
        widths, W = cfg["widths"], self.width
        units = jnp.arange(W)
        feats = self._features[cfg["dataset"]]
        last = widths[cfg["depth"] - 1]
        live = {"hidden_0": (jnp.arange(self.num_features) < feats, units < widths[0], feats)}
        for i in range(1, self.max_depth):  # widths[i] = 0 beyond depth: no live columns
            live[f"hidden_{i}"] = (units < widths[i - 1], units < widths[i], widths[i - 1])
        live["logits"] = (units < last, jnp.arange(self.num_classes)
                          < self._classes[cfg["dataset"]], last)
        return live

    def _masked_init(self, key, cfg):
        """Live weights init_scale * t / sqrt(fan_in), t ~ truncated N(0, 1) on [-2, 2]; all
        padded entries and all biases 0. One RNG draw for all layers (fast to compile)."""
        shapes = self.param_shapes()
        z = jax.random.truncated_normal(key, -2.0, 2.0, (sum(a * b for a, b in shapes.values()),))
        params, start = {}, 0
        for (module, (fan_in, fan_out)), (rows, cols, true_fan_in) in zip(
                shapes.items(), self._live(cfg).values()):
            w = z[start:start + fan_in * fan_out].reshape(fan_in, fan_out)
            scale = cfg["init_scale"] / jnp.sqrt(jnp.maximum(true_fan_in, 1).astype(jnp.float32))
            params[module] = {"w": jnp.where(rows[:, None] & cols[None, :], w * scale, 0.0),
                              "b": jnp.zeros((fan_out,), jnp.float32)}
            start += fan_in * fan_out
        return params

    def _forward(self, cfg, params, x):
        """Logits (N, K) of the sampled network on padded inputs x (N, F); absent classes
        are -inf."""
        fns = [ACTIVATIONS[a] for a in self.activations]
        act = fns[0] if len(fns) == 1 else (lambda u: jax.lax.switch(cfg["activation"], fns, u))
        units = jnp.arange(self.width)
        h = x
        for i in range(self.max_depth):
            p = params[f"hidden_{i}"]
            new = jnp.where(units < cfg["widths"][i], act(h @ p["w"] + p["b"]), 0.0)
            h = new if i == 0 else jnp.where(i < cfg["depth"], new, h)
        logits = h @ params["logits"]["w"] + params["logits"]["b"]
        present = jnp.arange(self.num_classes) < self._classes[cfg["dataset"]]
        return jnp.where(present, logits, _MASKED_LOGIT)

    # ------------------------------------------------------------------ cfgs

    def sample(self, key):
        """One uniform draw for all fields (one RNG call: ~4x faster to compile on CPU)."""
        L = self.max_depth
        u = jax.random.uniform(key, (5 + L,))

        def pick(v, n):  # uniform index in 0..n-1
            return jnp.minimum(jnp.floor(v * n), n - 1).astype(jnp.int32)

        depth = 1 + pick(u[1], L)
        widths = jnp.asarray(self.width_choices, jnp.int32)[pick(u[5:], len(self.width_choices))]
        lo, hi = math.log(self.min_init_scale), math.log(self.max_init_scale)
        return {
            "dataset": pick(u[0], len(self.datasets)),
            "depth": depth,
            "widths": jnp.where(jnp.arange(L) < depth, widths, 0),
            "activation": pick(u[2], len(self.activations)),
            "init_scale": jnp.exp(lo + (hi - lo) * u[3]),
            "batch_size": jnp.asarray(self.batch_choices, jnp.int32)[
                pick(u[4], len(self.batch_choices))],
        }

    def default_cfg(self, dataset: str | None = None, depth: int | None = None, widths=None,
                    activation: str | None = None, init_scale: float = 1.0,
                    batch_size: int | None = None):
        """A fixed cfg. Defaults: the first dataset, depth max_depth, every layer the largest
        width, relu (else the first activation), init scale 1, the largest batch size.
        ``widths`` is one int (every layer) or a list of ``depth`` ints."""
        dataset = self.datasets[0] if dataset is None else dataset
        if dataset not in self.datasets:
            raise TaskError(f"image_mlp: dataset {dataset!r} is not in this family's "
                            f"{self.datasets}")
        depth = self.max_depth if depth is None else depth
        if not (is_int(depth) and 1 <= depth <= self.max_depth):
            raise TaskError(f"image_mlp: depth must be an integer in 1..{self.max_depth}, "
                            f"got {depth!r}")
        widths = self.width if widths is None else widths
        widths = tuple(widths) if isinstance(widths, (list, tuple)) else (widths,) * depth
        if len(widths) != depth or not all(w in self.width_choices for w in widths):
            raise TaskError(f"image_mlp: widths must be {depth} values from "
                            f"{self.width_choices}, got {widths!r}")
        activation = activation or ("relu" if "relu" in self.activations else self.activations[0])
        if activation not in self.activations:
            raise TaskError(f"image_mlp: activation {activation!r} is not in this family's "
                            f"{self.activations}")
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size not in self.batch_choices:
            raise TaskError(f"image_mlp: batch_size must be one of {self.batch_choices}, "
                            f"got {batch_size!r}")
        if not (is_number(init_scale) and init_scale > 0):
            raise TaskError(f"image_mlp: init_scale must be a positive number, got {init_scale!r}")
        return {
            "dataset": jnp.asarray(self.datasets.index(dataset), jnp.int32),
            "depth": jnp.asarray(depth, jnp.int32),
            "widths": jnp.asarray(list(widths) + [0] * (self.max_depth - depth), jnp.int32),
            "activation": jnp.asarray(self.activations.index(activation), jnp.int32),
            "init_scale": jnp.asarray(init_scale, jnp.float32),
            "batch_size": jnp.asarray(batch_size, jnp.int32),
        }

    def describe(self, cfg) -> str:
        """A concrete (not traced) cfg in words, e.g. 'digits gelu (64, 64) b=32 scale=1.2'."""
        d = int(cfg["depth"])
        widths = tuple(int(w) for w in np.asarray(cfg["widths"])[:d])
        return (f"{self.datasets[int(cfg['dataset'])]} {self.activations[int(cfg['activation'])]}"
                f" {widths} b={int(cfg['batch_size'])} scale={float(cfg['init_scale']):.3g}")

    # ------------------------------------------------------------------ tasks

    def _full_split(self, cfg, split):
        """The sampled dataset's whole split, padded to the longest one: (x, y, row mask, n)."""
        x, y = self._split(split)
        n = self._sizes[split][cfg["dataset"]]
        rows = jnp.arange(max(self.split_sizes[split]))
        idx = self._offsets[split][cfg["dataset"]] + jnp.minimum(rows, n - 1)
        return jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), rows < n, n

    def logits(self, cfg, params, x):
        return self._logits(cfg, params, x)

    def accuracy(self, cfg, params, split="test"):
        """Fraction of the sampled dataset's ``split`` classified correctly."""
        x, y, valid, n = self._full_split(cfg, split)
        hit = jnp.argmax(self.logits(cfg, params, x), -1) == y
        return jnp.sum(jnp.where(valid, hit, False)) / n

    def task(self, cfg) -> Task:
        log_k = jnp.log(self._classes[cfg["dataset"]].astype(jnp.float32))

        def masked_mean_xent(params, x, y, valid, n):
            xent = optax.softmax_cross_entropy_with_integer_labels(
                self.logits(cfg, params, x), y)
            return jnp.sum(jnp.where(valid, xent, 0.0)) / n

        def init(key):
            return self._init(key, cfg)

        def loss(params, key, batch):
            """Mean over the first batch_size rows of the batch."""
            rows = jnp.arange(batch["y"].shape[0])
            n = jnp.minimum(cfg["batch_size"], batch["y"].shape[0]).astype(jnp.float32)
            return masked_mean_xent(params, batch["x"], batch["y"], rows < cfg["batch_size"], n)

        def sample_batch(key, split="train"):
            """B = max batch rows drawn uniformly from the sampled dataset's ``split``."""
            x, y = self._split(split)
            n = self._sizes[split][cfg["dataset"]]
            idx = self._offsets[split][cfg["dataset"]] + jax.random.randint(
                key, (self.batch_size,), 0, n)
            return {"x": jnp.take(x, idx, axis=0), "y": jnp.take(y, idx, axis=0)}

        def eval_loss(params, split="validation"):
            """Mean loss over the sampled dataset's whole split."""
            x, y, valid, n = self._full_split(cfg, split)
            return masked_mean_xent(params, x, y, valid, n.astype(jnp.float32))

        return Task(name=self.name, init=init, loss=loss, sample_batch=sample_batch,
                    normalizer=lambda l: l / log_k, eval_loss=eval_loss)
