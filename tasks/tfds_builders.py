"""TFDS array_record builders for the embedded datasets, and a reader for prepared ones.

Everything here works without TensorFlow: builders write array_record files and
``tfds.data_source`` reads them back. Only ``tasks.datasets`` should import this module
(lazily), so that loading a cached dataset never pays for importing TFDS.
"""
from __future__ import annotations

import contextlib
import io
import logging
import random

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from tasks.base import TaskError
from tasks.datasets import EMBEDDED_VERSIONS

_CHUNK = 5000  # examples decoded per data_source read


@contextlib.contextmanager
def quiet():
    """Hide TFDS progress bars, banners (stdout) and log messages, then restore the
    previous state, including the root logger (TFDS's logging would otherwise install a
    root handler as a side effect)."""
    root, absl_logger = logging.getLogger(), logging.getLogger("absl")
    handlers, level, absl_level = list(root.handlers), root.level, absl_logger.level
    bars = tqdm_utils._active
    root.handlers[:] = [logging.NullHandler()]
    absl_logger.setLevel(logging.ERROR)
    tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        absl_logger.setLevel(absl_level)
        tqdm_utils.display_progress_bar(bars)


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Examples {"x": float32 (NUM_FEATURES,), "label": class, "index": position}; the
    index lets readers restore the generation order that TFDS's shuffling hides."""

    VERSION = tfds.core.Version("0.0.0")
    NUM_FEATURES = 0
    NUM_CLASSES = 10
    DESCRIPTION = ""

    def _arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, supervised_keys=("x", "label"),
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(self.NUM_FEATURES,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
                "index": tfds.features.Tensor(shape=(), dtype=np.int64),
            }))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(x, y) for split, (x, y) in self._arrays().items()}

    def _generate_examples(self, x, y):
        for i in range(len(y)):
            yield i, {"x": x[i].astype(np.float32), "label": int(y[i]), "index": i}


class Mnist1d(_ArrayBuilder, skip_registration=True):
    """MNIST-1D (Greydanus 2020) with its default arguments: 4000 train / 1000 test
    examples of 40 features; train = first 3500, validation = last 500 of those."""

    VERSION = tfds.core.Version(EMBEDDED_VERSIONS["mnist1d"])
    NUM_FEATURES = 40
    DESCRIPTION = "MNIST-1D, generated offline by mnist1d.data.make_dataset (default args)."

    def _arrays(self):
        import mnist1d.data
        np_state, py_state = np.random.get_state(), random.getstate()
        try:  # make_dataset reseeds the global RNGs; put them back afterwards
            d = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        x, y = d["x"], d["y"]
        return {"train": (x[:3500], y[:3500]), "validation": (x[3500:], y[3500:]),
                "test": (d["x_test"], d["y_test"])}


class Digits(_ArrayBuilder, skip_registration=True):
    """sklearn's 8x8 digits (1797 examples) scaled from 0..16 to [0, 1]; a fixed
    permutation (seed 0) gives train 1197 / validation 300 / test 300."""

    VERSION = tfds.core.Version(EMBEDDED_VERSIONS["digits"])
    NUM_FEATURES = 64
    DESCRIPTION = "sklearn.datasets.load_digits, pixels / 16."

    def _arrays(self):
        from sklearn.datasets import load_digits
        d = load_digits()
        x, y = d.data / 16.0, d.target
        p = np.random.default_rng(0).permutation(len(y))
        tr, va, te = p[:1197], p[1197:1497], p[1497:]
        return {"train": (x[tr], y[tr]), "validation": (x[va], y[va]), "test": (x[te], y[te])}


BUILDERS = {"mnist1d": Mnist1d, "digits": Digits}


def prepare(name: str, root) -> None:
    """Write embedded dataset ``name`` as array_record files under ``root``."""
    builder = BUILDERS[name](data_dir=str(root), file_format="array_record")
    with quiet():
        builder.download_and_prepare()


def read_splits(name: str, version: str, root) -> tuple[dict, int]:
    """Read every split of a prepared dataset via ``tfds.data_source``.

    Returns ({split: (x, y)}, num_classes); x keeps its stored dtype and shape
    (feature "image" or "x"), y is int64 (feature "label").
    """
    with quiet():
        sources = tfds.data_source(f"{name}:{version}", data_dir=str(root), download=False)
        out, num_classes = {}, None
        for split, src in sources.items():
            features = src.dataset_info.features
            x_key = next((k for k in ("image", "x") if k in features), None)
            if x_key is None or "label" not in features:
                raise TaskError(f"dataset {name!r} needs features 'image' (or 'x') and "
                                f"'label'; it has {sorted(features)}")
            examples = []
            for start in range(0, len(src), _CHUNK):
                examples += src.__getitems__(range(start, min(start + _CHUNK, len(src))))
            x = np.stack([e[x_key] for e in examples])
            y = np.asarray([e["label"] for e in examples], np.int64)
            if "index" in features:  # restore generation order
                order = np.argsort([e["index"] for e in examples], kind="stable")
                x, y = x[order], y[order]
            out[split] = (x, y)
            num_classes = getattr(features["label"], "num_classes", None) or num_classes
    if num_classes is None:
        num_classes = int(max(y.max() for _, y in out.values())) + 1
    return out, int(num_classes)
