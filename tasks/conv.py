"""Small convolutional classifiers: 2-D convs on images, 1-D convs on signals.

Static: dataset, channels per conv layer, kernel size, stride, batch size, the tuple of
candidate activations. The flat dataset rows are reshaped to examples of shape
(H, W, 1) for images ("digits": 8x8) and (L, 1) for 1-D signals ("mnist1d": 40), or the
dataset's own (H, W, C) for a prepared TFDS image dataset.

Network (NHWC / NWC layout, "SAME" padding as in TensorFlow/Haiku):
    h_0 = x;  h_{i+1} = act(conv(h_i, w_i, stride) + b_i)   for each entry of ``channels``
    logits = mean_{spatial}(h_n) @ W + B                    (global average pool + linear)
conv(h, w, s)[p, o] = sum_{k, c} h_pad[s p + k, c] w[k, c, o], with h zero-padded by
pad_total = max((ceil(n/s) - 1) s + K - n, 0) split as (pad_total // 2 before, rest after),
so the output has ceil(n/s) positions per spatial axis. Kernels are 4-D (kh, kw, cin, cout)
for 2-D convs and 3-D (k, cin, cout) for 1-D convs.

Dynamic cfg = {"activation": int32 index into ``activations``, "init_scale": float32};
weights = init_scale * t / sqrt(fan_in), t ~ N(0, 1) truncated to [-2, 2], fan_in =
prod(kernel window) * cin (the head: its input width), biases 0; log(init_scale) ~
U[log min_init_scale, log max_init_scale].

loss = mean softmax cross-entropy over the batch; normaliser = loss / log(K), so a uniform
prediction over K classes scores 1.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tasks.base import TaskError, check_activations, check_init_range, is_int, log_uniform
from tasks.classifier import ClassifierFamily
from tasks.datasets import SPLITS, load_dataset
from tasks.mlp import ACTIVATIONS, DEFAULT_ACTIVATIONS

# Datasets stored flat whose rows are really images.
EXAMPLE_SHAPES = {"digits": (8, 8, 1)}
_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def example_shape(dataset: str, input_shape: tuple) -> tuple:
    """Shape of one example as the conv net sees it: (*spatial, channels)."""
    if dataset in EXAMPLE_SHAPES:
        return EXAMPLE_SHAPES[dataset]
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 1:
        return (*shape, 1)       # a 1-D signal with one channel
    if len(shape) == 2:
        return (*shape, 1)       # a grey image stored without its channel axis
    if len(shape) == 3:
        return shape
    raise TaskError(f"conv: cannot convolve examples of shape {shape}; "
                    "need a 1-D signal or an (H, W[, C]) image dataset")


def conv_layer(h, w, b, stride: int):
    """'SAME' convolution of ``h`` (N, *spatial, Cin) with kernel ``w`` (*window, Cin, Cout)
    at ``stride`` on every spatial axis, plus bias ``b`` (Cout,)."""
    nd = h.ndim - 2
    return jax.lax.conv_general_dilated(h, w, (stride,) * nd, "SAME",
                                        dimension_numbers=_DIMENSION_NUMBERS[nd]) + b


def conv_forward(params, x, act, stride: int):
    """Logits of the conv net for inputs ``x`` of shape (N, *spatial, C); ``act`` is a
    function. Works for any spatial size (the head sees globally pooled features)."""
    nd = x.ndim - 2
    h, i = x, 0
    while f"conv_{i}" in params:
        h = act(conv_layer(h, params[f"conv_{i}"]["w"], params[f"conv_{i}"]["b"], stride))
        i += 1
    h = jnp.mean(h, axis=tuple(range(1, 1 + nd)))
    return h @ params["logits"]["w"] + params["logits"]["b"]


def check_common_args(prefix, batch_size, activations, min_init_scale, max_init_scale):
    """Validates the arguments conv and autoencoder families share; returns activations."""
    if not (is_int(batch_size) and batch_size >= 1):
        raise TaskError(f"{prefix}: batch_size must be a positive integer, got {batch_size!r}")
    activations = check_activations(prefix, activations, ACTIVATIONS)
    check_init_range(prefix, min_init_scale, max_init_scale)
    return activations


def activation_fn(activations, index):
    """act(h) for a (possibly traced) index into the tuple of names ``activations``: a
    concrete index picks the function directly (one branch to compile), a traced one
    (sampled cfgs under jit/vmap) selects with ``lax.switch``."""
    fns = [ACTIVATIONS[a] for a in activations]
    if len(fns) == 1:
        return fns[0]
    if not isinstance(index, jax.core.Tracer):
        return fns[int(index)]
    return lambda h: jax.lax.switch(index, fns, h)


def default_activation_cfg(activations, activation, init_scale):
    activation = activation or ("relu" if "relu" in activations else activations[0])
    if activation not in activations:
        raise TaskError(f"activation {activation!r} is not in this family's {activations}")
    return {"activation": jnp.asarray(activations.index(activation), jnp.int32),
            "init_scale": jnp.asarray(init_scale, jnp.float32)}


def sample_activation_cfg(key, activations, min_init_scale, max_init_scale):
    k_act, k_scale = jax.random.split(key)
    return {"activation": jax.random.randint(k_act, (), 0, len(activations), jnp.int32),
            "init_scale": log_uniform(k_scale, min_init_scale, max_init_scale)}


def scaled_init(key, shapes, init_scale):
    """{name: {"w": init_scale * t / sqrt(fan_in), "b": 0}} for ``shapes`` = {name: w shape},
    fan_in = prod(w.shape[:-1]); t from ONE truncated-normal draw (fast to compile)."""
    sizes = [math.prod(s) for s in shapes.values()]
    z = jax.random.truncated_normal(key, -2.0, 2.0, (sum(sizes),))
    params, start = {}, 0
    for (name, shape), size in zip(shapes.items(), sizes):
        fan_in = math.prod(shape[:-1])
        params[name] = {"w": z[start:start + size].reshape(shape)
                        * (init_scale / math.sqrt(fan_in)),
                        "b": jnp.zeros((shape[-1],), jnp.float32)}
        start += size
    return params


class ConvClassifierFamily(ClassifierFamily):
    """Conv nets (``channels`` conv layers, global average pool, linear head) on
    ``dataset``: 2-D convs for images, 1-D convs for signals (see the module docstring)."""

    def __init__(self, dataset: str = "digits", channels=(8, 16), kernel: int = 3,
                 stride: int = 2, batch_size: int = 64, activations=DEFAULT_ACTIVATIONS,
                 min_init_scale: float = 0.5, max_init_scale: float = 2.0,
                 data_dir: str | None = None):
        channels = tuple(channels) if isinstance(channels, (list, tuple)) else None
        if not channels or not all(is_int(c) and c >= 1 for c in channels):
            raise TaskError("conv: channels must be a non-empty list of positive integers")
        if not (is_int(kernel) and kernel >= 1):
            raise TaskError(f"conv: kernel must be a positive integer, got {kernel!r}")
        if not (is_int(stride) and stride >= 1):
            raise TaskError(f"conv: stride must be a positive integer, got {stride!r}")
        self.activations = check_common_args("conv", batch_size, activations, min_init_scale,
                                         max_init_scale)
        ds = load_dataset(dataset, data_dir)
        self.example_shape = example_shape(dataset, ds.input_shape)
        if math.prod(self.example_shape) != ds.num_features:
            raise TaskError(f"conv: dataset {dataset!r} rows have {ds.num_features} values, "
                            f"not {math.prod(self.example_shape)} = {self.example_shape}")
        self.name = f"{dataset}_conv"
        self.dataset, self.channels = dataset, tuple(int(c) for c in channels)
        self.kernel, self.stride, self.batch_size = int(kernel), int(stride), int(batch_size)
        self.min_init_scale, self.max_init_scale = float(min_init_scale), float(max_init_scale)
        self.num_classes, self.split_sizes = ds.num_classes, ds.sizes()
        self.data = {s: (jnp.asarray(ds.split(s)[0].reshape(-1, *self.example_shape)),
                         jnp.asarray(ds.split(s)[1])) for s in SPLITS}
        nd = len(self.example_shape) - 1
        shapes, cin = {}, self.example_shape[-1]
        for i, cout in enumerate(self.channels):
            shapes[f"conv_{i}"] = (self.kernel,) * nd + (cin, cout)
            cin = cout
        shapes["logits"] = (cin, self.num_classes)
        self.param_shapes = shapes  # {module: kernel / weight shape}
        self._init = jax.jit(lambda key, scale: scaled_init(key, self.param_shapes, scale))

    def sample(self, key):
        return sample_activation_cfg(key, self.activations, self.min_init_scale,
                                     self.max_init_scale)

    def default_cfg(self, activation: str | None = None, init_scale: float = 1.0):
        """Deterministic cfg: ``activation`` (default relu, else the first one), scale 1."""
        return default_activation_cfg(self.activations, activation, init_scale)

    def logits(self, cfg, params, x):
        """Logits for examples ``x`` of shape (N, *example_shape)."""
        return conv_forward(params, x, activation_fn(self.activations, cfg["activation"]),
                            self.stride)
