"""Small causal transformers: character-level language models on the same corpus, windows and
batches as ``tasks.sequence`` (a family of attention models no shipped optimizer trained on).

Model (pre-LayerNorm, plain JAX), width d, H heads of size d/H, ``num_layers`` blocks, MLP
width 4d with the cfg's activation a, for a window x of L characters:

    h   = E[x] + P[:L]                                       (token and position embeddings)
    per block:
      z = LN(h; g1, b1);  q, k, v = z Wq, z Wk, z Wv           (split into H heads)
      h = h + concat_heads(softmax(q k^T / sqrt(d/H) + causal mask) v) Wo
      z = LN(h; g2, b2);  h = h + a(z W1 + c1) W2 + c2
    logits = LN(h; g, b) Wout + bout
    LN(z; g, b) = g * (z - mean(z)) / sqrt(var(z) + 1e-5) + b   (over the d features)

loss = mean next-character cross-entropy; normaliser = loss / log(V). Init: every matrix
init_scale * t / sqrt(fan_in), embeddings init_scale * t / sqrt(d), t ~ N(0, 1) truncated to
[-2, 2]; LayerNorm gains 1, every bias 0. cfg = {"activation", "init_scale"} as in text_rnn.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tasks.base import TaskError, is_int
from tasks.mlp import ACTIVATIONS as MLP_ACTIVATIONS
from tasks.sequence import TextRNNFamily

ACTIVATIONS = {k: MLP_ACTIVATIONS[k] for k in ("gelu", "relu", "silu")}


def layer_norm(z, g, b, eps: float = 1e-5):
    mu = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(z - mu), axis=-1, keepdims=True)
    return g * (z - mu) * jax.lax.rsqrt(var + eps) + b


class TextTransformerFamily(TextRNNFamily):
    """Causal transformer character LMs (see the module docstring); data as ``text_rnn``."""

    name = "text_transformer"

    def __init__(self, corpus: str = "stdlib_docs", width: int = 32, heads: int = 2,
                 num_layers: int = 1, seq_len: int = 32, batch_size: int = 32,
                 activations=tuple(ACTIVATIONS), min_init_scale: float = 0.5,
                 max_init_scale: float = 2.0):
        for arg, v in (("width", width), ("heads", heads), ("num_layers", num_layers),
                       ("seq_len", seq_len), ("batch_size", batch_size)):
            if not (is_int(v) and v >= 1):
                raise TaskError(f"text_transformer: {arg} must be a positive integer, got {v!r}")
        if width % heads:
            raise TaskError(f"text_transformer: width {width} must be a multiple of heads {heads}")
        self.width, self.heads, self.num_layers = int(width), int(heads), int(num_layers)
        self._setup("text_transformer", corpus, seq_len, batch_size, activations, ACTIVATIONS,
                    min_init_scale, max_init_scale)

    def param_shapes(self) -> dict:
        d, v, L = self.width, self.vocab_size, self.seq_len
        block = {"ln1": {"g": (d,), "b": (d,)},
                 "attn": {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d)},
                 "ln2": {"g": (d,), "b": (d,)},
                 "mlp": {"w1": (d, 4 * d), "c1": (4 * d,), "w2": (4 * d, d), "c2": (d,)}}
        shapes = {"embed": {"w": (v, d)}, "pos": {"w": (L, d)},
                  "ln_f": {"g": (d,), "b": (d,)}, "out": {"w": (d, v), "b": (v,)}}
        shapes.update({f"block_{i}": block for i in range(self.num_layers)})
        return shapes

    def _scaled_init(self, key, init_scale):
        flat, treedef = jax.tree_util.tree_flatten_with_path(
            self.param_shapes(), is_leaf=lambda x: isinstance(x, tuple))
        keys = jax.random.split(key, len(flat))
        leaves = []
        for (path, shape), k in zip(flat, keys):
            name = path[-1].key
            if len(shape) == 1:
                leaves.append(jnp.ones(shape) if name == "g" else jnp.zeros(shape))
                continue
            module = path[0].key
            fan_in = self.width if module in ("embed", "pos") else shape[0]
            t = jax.random.truncated_normal(k, -2.0, 2.0, shape)
            leaves.append(t * (init_scale / math.sqrt(fan_in)))
        return jax.tree.unflatten(treedef, leaves)

    def logits(self, cfg, params, inputs):
        """(B, L) int ids -> (B, L, V) next-character logits."""
        act = self._activation(cfg["activation"])
        B, L = inputs.shape
        H, dh = self.heads, self.width // self.heads
        h = jnp.take(params["embed"]["w"], inputs, axis=0) + params["pos"]["w"][:L]
        causal = jnp.tril(jnp.ones((L, L), bool))
        for i in range(self.num_layers):
            p = params[f"block_{i}"]
            z = layer_norm(h, p["ln1"]["g"], p["ln1"]["b"])
            q, k, v = (jnp.reshape(z @ p["attn"][w], (B, L, H, dh)) for w in ("wq", "wk", "wv"))
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
            a = jax.nn.softmax(jnp.where(causal, s, -1e30), axis=-1)
            o = jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, L, self.width)
            h = h + o @ p["attn"]["wo"]
            z = layer_norm(h, p["ln2"]["g"], p["ln2"]["b"])
            h = h + act(z @ p["mlp"]["w1"] + p["mlp"]["c1"]) @ p["mlp"]["w2"] + p["mlp"]["c2"]
        h = layer_norm(h, params["ln_f"]["g"], params["ln_f"]["b"])
        return h @ params["out"]["w"] + params["out"]["b"]


__all__ = ["TextTransformerFamily", "layer_norm"]
