"""Shared plumbing of dataset-backed families: device-resident splits, and classifiers
trained with cross-entropy on random batches.

A subclass of ``DataFamily`` sets ``self.data = {split: arrays}`` (on device). A subclass
of ``ClassifierFamily`` also provides ``logits(cfg, params, x)``, ``_init(key, init_scale)``,
``num_classes``, ``batch_size`` and ``name``; it gets ``task(cfg)``:
    loss = mean_i -log softmax(logits(x_i))[y_i] over a batch drawn uniformly with
    replacement from the train split (indices drawn on device), normaliser = loss / log(K)
    (a uniform prediction scores 1), eval_loss = the loss over a whole split.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from tasks.base import Task, TaskError, TaskFamily
from tasks.datasets import SPLITS


class DataFamily(TaskFamily):
    data: dict

    def _split(self, split):
        if split not in self.data:
            raise TaskError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return self.data[split]


class ClassifierFamily(DataFamily):
    def accuracy(self, cfg, params, split="test"):
        """Fraction of ``split`` classified correctly (argmax of the logits)."""
        x, y = self._split(split)
        return jnp.mean(jnp.argmax(self.logits(cfg, params, x), -1) == y)

    def task(self, cfg) -> Task:
        log_k = math.log(self.num_classes)

        def init(key):
            return self._init(key, cfg["init_scale"])

        def mean_xent(params, x, y):
            logits = self.logits(cfg, params, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def loss(params, key, batch):
            return mean_xent(params, batch["x"], batch["y"])

        def sample_batch(key, split="train"):
            x, y = self._split(split)
            idx = jax.random.randint(key, (self.batch_size,), 0, y.shape[0])
            return {"x": jnp.take(x, idx, axis=0), "y": jnp.take(y, idx, axis=0)}

        def eval_loss(params, split="validation"):
            """Mean loss over the whole split."""
            return mean_xent(params, *self._split(split))

        return Task(name=self.name, init=init, loss=loss, sample_batch=sample_batch,
                    normalizer=lambda l: l / log_k, eval_loss=eval_loss)
