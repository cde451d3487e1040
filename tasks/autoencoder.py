"""MLP autoencoders on images with pixels in [0, 1].

Static: dataset, hidden sizes (encoder and decoder widths in order, e.g. (32, 8, 32): the
smallest is the code), batch size, the tuple of candidate activations.

Network: h_0 = x;  h_{i+1} = act(h_i W_i + b_i) for each hidden size;
         x_hat = sigmoid(h_n W + b).
loss = mean over the batch and the D pixels of (x_hat - x)^2.

Init: hidden weights = init_scale * t / sqrt(fan_in), t ~ N(0, 1) truncated to [-2, 2],
hidden biases 0 (as ``tasks.mlp``). The output layer starts at the trivial model: W = 0 and
b = logit(clip(m, 1e-3, 1 - 1e-3)) with m the training mean image, so x_hat = m at init
(the first step moves W, since dloss/dW = h^T dloss/dx_hat is non-zero; the hidden layers
follow from the second step on).

Normaliser: loss / L_mean with L_mean = mean over the training split and pixels of
(m - x)^2 (computed once, in float64, from the data): predicting the mean image scores 1,
so every member of the family starts near 1 and a perfect reconstruction scores 0.

Dynamic cfg = {"activation": int32 index into ``activations``, "init_scale": float32},
log(init_scale) ~ U[log min_init_scale, log max_init_scale].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tasks.base import Task, TaskError, is_int
from tasks.conv import (check_common_args, activation_fn, default_activation_cfg,
                        sample_activation_cfg, scaled_init)
from tasks.classifier import DataFamily
from tasks.datasets import SPLITS, load_dataset
from tasks.mlp import DEFAULT_ACTIVATIONS

MEAN_CLIP = 1e-3  # the output bias is logit(clip(mean image, MEAN_CLIP, 1 - MEAN_CLIP))


def autoencoder_forward(params, x, act):
    """Reconstructions sigmoid(...) of ``x`` (N, D) for params {"hidden_i", "output"}."""
    h, i = x, 0
    while f"hidden_{i}" in params:
        h = act(h @ params[f"hidden_{i}"]["w"] + params[f"hidden_{i}"]["b"])
        i += 1
    return jax.nn.sigmoid(h @ params["output"]["w"] + params["output"]["b"])


class AutoencoderFamily(DataFamily):
    """MLP encoder-decoder reconstructing ``dataset`` images (see the module docstring)."""

    def __init__(self, dataset: str = "digits", hidden_sizes=(32, 8, 32), batch_size: int = 128,
                 activations=DEFAULT_ACTIVATIONS, min_init_scale: float = 0.5,
                 max_init_scale: float = 2.0, data_dir: str | None = None):
        hidden_sizes = tuple(hidden_sizes) if isinstance(hidden_sizes, (list, tuple)) else None
        if not hidden_sizes or not all(is_int(w) and w >= 1 for w in hidden_sizes):
            raise TaskError("autoencoder: hidden_sizes must be a non-empty list of positive "
                            "integers, e.g. [32, 8, 32]")
        self.activations = check_common_args("autoencoder", batch_size, activations,
                                         min_init_scale, max_init_scale)
        ds = load_dataset(dataset, data_dir)
        x_train = ds.split("train")[0]
        lo, hi = min(float(ds.split(s)[0].min()) for s in SPLITS), \
            max(float(ds.split(s)[0].max()) for s in SPLITS)
        if lo < 0.0 or hi > 1.0:
            raise TaskError(f"autoencoder: needs inputs in [0, 1] (sigmoid output), but "
                            f"{dataset!r} spans [{lo:.3g}, {hi:.3g}]; use an image dataset "
                            "such as digits")
        self.name = f"{dataset}_autoencoder"
        self.dataset, self.hidden_sizes = dataset, tuple(int(w) for w in hidden_sizes)
        self.batch_size = int(batch_size)
        self.min_init_scale, self.max_init_scale = float(min_init_scale), float(max_init_scale)
        self.num_features, self.split_sizes = ds.num_features, ds.sizes()
        mean = x_train.astype(np.float64).mean(0)
        self.mean_image = jnp.asarray(mean, jnp.float32)
        # Loss of predicting the training mean image on the training split.
        self.mean_image_loss = float(np.mean((x_train.astype(np.float64) - mean) ** 2))
        clipped = np.clip(mean, MEAN_CLIP, 1 - MEAN_CLIP)
        self._output_bias = jnp.asarray(np.log(clipped / (1 - clipped)), jnp.float32)
        self.data = {s: jnp.asarray(ds.split(s)[0]) for s in SPLITS}
        widths = (self.num_features, *self.hidden_sizes)
        self.param_shapes = {f"hidden_{i}": (a, b)
                             for i, (a, b) in enumerate(zip(widths, widths[1:]))}
        self.param_shapes["output"] = (widths[-1], self.num_features)
        self._init = jax.jit(self._scaled_init)

    def _scaled_init(self, key, init_scale):
        hidden = {k: v for k, v in self.param_shapes.items() if k != "output"}
        k_hidden, k_out = jax.random.split(key)
        params = scaled_init(k_hidden, hidden, init_scale)
        # W = 0, written as 0 * (a draw) rather than jnp.zeros: XLA:CPU in jaxlib 0.10.2
        # miscompiles a jitted matmul with a constant (broadcast) operand fused into a
        # reduction (its "ynn" fusion returns garbage), which a jit that inits and then
        # evaluates the loss would hit. x * 0 is not folded for floats, so W stays an array.
        w = 0.0 * jax.random.uniform(k_out, self.param_shapes["output"], jnp.float32)
        params["output"] = {"w": w, "b": self._output_bias}
        return params

    def sample(self, key):
        return sample_activation_cfg(key, self.activations, self.min_init_scale,
                                     self.max_init_scale)

    def default_cfg(self, activation: str | None = None, init_scale: float = 1.0):
        """Deterministic cfg: ``activation`` (default relu, else the first one), scale 1."""
        return default_activation_cfg(self.activations, activation, init_scale)

    def reconstruct(self, cfg, params, x):
        """x_hat for flat images ``x`` (N, D)."""
        return autoencoder_forward(params, x, activation_fn(self.activations, cfg["activation"]))

    def task(self, cfg) -> Task:
        scale = 1.0 / self.mean_image_loss

        def mse(params, x):
            return jnp.mean((self.reconstruct(cfg, params, x) - x) ** 2)

        def init(key):
            return self._init(key, cfg["init_scale"])

        def loss(params, key, batch):
            return mse(params, batch["x"])

        def sample_batch(key, split="train"):
            x = self._split(split)
            idx = jax.random.randint(key, (self.batch_size,), 0, x.shape[0])
            return {"x": jnp.take(x, idx, axis=0)}

        def eval_loss(params, split="validation"):
            """Mean loss over the whole split."""
            return mse(params, self._split(split))

        return Task(name=self.name, init=init, loss=loss, sample_batch=sample_batch,
                    normalizer=lambda l: l * scale, eval_loss=eval_loss)
