"""Character-level recurrent language models on a text corpus that ships with Python.

Data: ``tasks.text`` (docstrings or source of a fixed list of stdlib modules, 97-symbol
vocabulary, contiguous 80/10/10 train/validation/test split), resident on the device as one
int32 array per split. A batch is ``batch_size`` random windows of ``seq_len + 1`` characters
of a split, gathered inside jit: ``inputs = w[:, :-1]``, ``targets = w[:, 1:]``.

Model (plain JAX, one ``lax.scan`` over positions, zero initial state), with embedding
``E = params["embed"]["w"]`` (V x G*H: the input weights of a one-hot input), recurrent weights
``U``, bias ``b``, and a = the cfg's activation:
- ``rnn``  (G=1): h' = a(E[x] + h U + b)
- ``gru``  (G=3): [r, z, n] = split(E[x] + b), [ur, uz, un] = split(h U);
  r = sigmoid(r + ur), z = sigmoid(z + uz), h' = (1 - z) * a(n + r * un) + z * h
- ``lstm`` (G=4): [i, f, g, o] = split(E[x] + h U + b); c' = sigmoid(f) c + sigmoid(i) a(g),
  h' = sigmoid(o) a(c')
then logits = h' W + c at every position. loss = mean next-character cross-entropy over the
batch; normaliser = loss / log(V) (a uniform prediction scores 1).

Static: corpus, cell, hidden size H, seq_len, batch_size, the candidate activations.
Dynamic cfg = {"activation": int32 index into ``activations``, "init_scale": float32}, with
log(init_scale) ~ U[log min_init_scale, log max_init_scale]. Init: every weight is
init_scale * t / sqrt(fan_in), t ~ N(0, 1) truncated to [-2, 2] (fan_in = 1 for E, H for U
and W), biases 0.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from tasks import text
from tasks.base import (Task, TaskError, TaskFamily, check_activations, check_init_range, is_int,
                        log_uniform)

CELL_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
ACTIVATIONS = {"tanh": jnp.tanh, "soft_sign": jax.nn.soft_sign, "hard_tanh": jax.nn.hard_tanh}
DEFAULT_ACTIVATIONS = ("tanh", "soft_sign", "hard_tanh")


class TextRNNFamily(TaskFamily):
    """Recurrent character LMs on ``tasks.text`` corpus ``corpus``."""

    name = "text_rnn"

    def __init__(self, corpus: str = "stdlib_docs", cell: str = "gru", hidden_size: int = 64,
                 seq_len: int = 32, batch_size: int = 32, activations=DEFAULT_ACTIVATIONS,
                 min_init_scale: float = 0.5, max_init_scale: float = 2.0):
        if cell not in CELL_GATES:
            raise TaskError(f"text_rnn: unknown cell {cell!r}; choose one of "
                            f"{', '.join(CELL_GATES)}")
        for arg, v in (("hidden_size", hidden_size), ("seq_len", seq_len),
                       ("batch_size", batch_size)):
            if not (is_int(v) and v >= 1):
                raise TaskError(f"text_rnn: {arg} must be a positive integer, got {v!r}")
        self.cell, self.hidden_size = cell, int(hidden_size)
        self._setup("text_rnn", corpus, seq_len, batch_size, activations, ACTIVATIONS,
                    min_init_scale, max_init_scale)

    def _setup(self, name, corpus, seq_len, batch_size, activations, known, min_init_scale,
               max_init_scale):
        """Checks and the corpus on the device (shared by every text LM family)."""
        activations = check_activations(name, activations, known)
        check_init_range(name, min_init_scale, max_init_scale)
        splits = text.corpus_splits(corpus)  # TaskError if unknown or unreadable
        shortest = min(len(v) for v in splits.values())
        if seq_len + 1 > shortest:
            raise TaskError(f"{name}: seq_len {seq_len} is too long for the corpus' "
                            f"smallest split ({shortest} characters)")
        self.corpus = corpus
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.activations, self.activation_fns = activations, known
        self.min_init_scale, self.max_init_scale = float(min_init_scale), float(max_init_scale)
        self.vocab_size = text.VOCAB_SIZE
        self.split_sizes = {s: len(v) for s, v in splits.items()}
        self.data = {s: jnp.asarray(v) for s, v in splits.items()}
        self._init = jax.jit(self._scaled_init)

    # ------------------------------------------------------------------ parameters

    def param_shapes(self) -> dict:
        v, h, g = self.vocab_size, self.hidden_size, CELL_GATES[self.cell]
        return {"embed": {"w": (v, g * h)}, "core": {"u": (h, g * h), "b": (g * h,)},
                "out": {"w": (h, v), "b": (v,)}}

    def _scaled_init(self, key, init_scale):
        """Weights init_scale * t / sqrt(fan_in) from one truncated-normal draw; biases 0."""
        shapes = self.param_shapes()
        weights = [("embed", "w", 1), ("core", "u", self.hidden_size),
                   ("out", "w", self.hidden_size)]
        sizes = [math.prod(shapes[m][p]) for m, p, _ in weights]
        z = jax.random.truncated_normal(key, -2.0, 2.0, (sum(sizes),))
        params = {m: {p: jnp.zeros(s, jnp.float32) for p, s in d.items()}
                  for m, d in shapes.items()}
        start = 0
        for (m, p, fan_in), size in zip(weights, sizes):
            w = z[start:start + size].reshape(shapes[m][p])
            params[m][p] = w * (init_scale / math.sqrt(fan_in))
            start += size
        return params

    # ------------------------------------------------------------------ model

    def _activation(self, index):
        """The cfg's activation. All candidates are evaluated and one is selected (cheap
        elementwise work): a ``lax.switch`` inside the scan costs ~3x the compile time, and
        under vmap over cfgs it evaluates every branch anyway."""
        fns = [self.activation_fns[a] for a in self.activations]
        if len(fns) == 1:
            return fns[0]
        return lambda x: jnp.select([index == k for k in range(len(fns) - 1)],
                                    [f(x) for f in fns[:-1]], fns[-1](x))

    def _step(self, act, u, state, ex):
        """One cell step: ``ex`` = E[x] + b for this position, (B, G*H)."""
        if self.cell == "rnn":
            h = act(ex + state @ u)
            return h, h
        if self.cell == "gru":
            xr, xz, xn = jnp.split(ex, 3, axis=-1)
            ur, uz, un = jnp.split(state @ u, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + ur), jax.nn.sigmoid(xz + uz)
            h = (1.0 - z) * act(xn + r * un) + z * state
            return h, h
        h, c = state
        i, f, g, o = jnp.split(ex + h @ u, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * act(g)
        h = jax.nn.sigmoid(o) * act(c)
        return (h, c), h

    def logits(self, cfg, params, inputs):
        """(B, L) int ids -> (B, L, V) next-character logits."""
        act = self._activation(cfg["activation"])
        ex = jnp.take(params["embed"]["w"], inputs.T, axis=0) + params["core"]["b"]  # (L,B,GH)
        h0 = jnp.zeros((inputs.shape[0], self.hidden_size), ex.dtype)
        state = (h0, h0) if self.cell == "lstm" else h0
        u = params["core"]["u"]
        _, hs = jax.lax.scan(lambda s, e: self._step(act, u, s, e), state, ex)
        return jnp.swapaxes(hs, 0, 1) @ params["out"]["w"] + params["out"]["b"]

    # ------------------------------------------------------------------ family API

    def sample(self, key):
        k_act, k_scale = jax.random.split(key)
        return {"activation": jax.random.randint(k_act, (), 0, len(self.activations), jnp.int32),
                "init_scale": log_uniform(k_scale, self.min_init_scale, self.max_init_scale)}

    def default_cfg(self, activation: str | None = None, init_scale: float = 1.0):
        """Deterministic cfg: ``activation`` (default tanh, else the first one), scale 1."""
        activation = activation or ("tanh" if "tanh" in self.activations
                                    else self.activations[0])
        if activation not in self.activations:
            raise TaskError(f"activation {activation!r} is not in this family's "
                            f"{self.activations}")
        return {"activation": jnp.asarray(self.activations.index(activation), jnp.int32),
                "init_scale": jnp.asarray(init_scale, jnp.float32)}

    def _split(self, split):
        if split not in self.data:
            raise TaskError(f"unknown split {split!r}; choose one of {', '.join(text.SPLITS)}")
        return self.data[split]

    def eval_windows(self, split):
        """The split cut into consecutive non-overlapping windows: (inputs, targets)."""
        ids = self._split(split)
        n = (ids.shape[0] - 1) // self.seq_len * self.seq_len
        return ids[:n].reshape(-1, self.seq_len), ids[1:n + 1].reshape(-1, self.seq_len)

    def task(self, cfg) -> Task:
        log_v, length, size = math.log(self.vocab_size), self.seq_len, self.batch_size

        def init(key):
            return self._init(key, cfg["init_scale"])

        def mean_xent(params, inputs, targets):
            logits = self.logits(cfg, params, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        def loss(params, key, batch):
            return mean_xent(params, batch["inputs"], batch["targets"])

        def sample_batch(key, split="train"):
            ids = self._split(split)
            starts = jax.random.randint(key, (size,), 0, ids.shape[0] - length)
            windows = jnp.take(ids, starts[:, None] + jnp.arange(length + 1), axis=0)
            return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

        def eval_loss(params, split="validation"):
            """Mean loss over the split in consecutive windows of seq_len (each from a zero
            state), i.e. every character of the split but the first is predicted once."""
            return mean_xent(params, *self.eval_windows(split))

        return Task(name=self.name, init=init, loss=loss, sample_batch=sample_batch,
                    normalizer=lambda l: l / log_v, eval_loss=eval_loss)
