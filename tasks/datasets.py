"""Classification datasets as in-memory numpy arrays, read from TFDS array_record files.

Two datasets are embedded (built offline on first use by ``tasks.tfds_builders``):
``mnist1d`` (40 features, 10 classes) and ``digits`` (8x8 sklearn digits, 10 classes).
Any other name is a TFDS dataset that must already be prepared in array_record format
in the data dir (``LOPT_DATA_DIR``, else ``~/.cache/learned_opt/tfds``); it is read with
``tfds.data_source`` and nothing is ever downloaded.

Loaded arrays are cached in-process and in an ``.npz`` file inside the dataset's TFDS
version directory, so later processes skip TFDS (and its import) entirely.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import re
from pathlib import Path

import numpy as np

from tasks.base import DatasetNotFoundError, TaskError

DEFAULT_DATA_DIR = "~/.cache/learned_opt/tfds"
DATA_DIR_ENV = "LOPT_DATA_DIR"
# name -> TFDS version of the embedded builders (tasks.tfds_builders reads these).
EMBEDDED_VERSIONS = {"mnist1d": "1.0.0", "digits": "1.0.0"}
EMBEDDED = tuple(EMBEDDED_VERSIONS)
CACHE_FILE = "lopt_arrays_v1.npz"
SPLITS = ("train", "validation", "test")
VALIDATION_SEED = 0      # fixed permutation that carves validation out of train
MAX_VALIDATION = 10_000  # validation = min(10% of train, this) for TFDS datasets

_NAME_RE = re.compile(r"[a-z0-9_]+(/[A-Za-z0-9_.-]+)?")
_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/validation/test splits. x arrays are float32 (N, prod(input_shape)) in a
    fixed range ([0, 1] for images), y arrays int32 (N,) in [0, num_classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple  # shape of one example before flattening, e.g. (28, 28, 1)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)[1]) for s in SPLITS}


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data dir: ``path`` if given, else $LOPT_DATA_DIR, else ~/.cache/learned_opt/tfds."""
    path = path or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(path).expanduser().resolve()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 image_size: tuple[int, int] | None = None) -> Dataset:
    """Load dataset ``name`` (embedded or prepared TFDS); see the module docstring.
    ``image_size=(h, w)`` resizes an image dataset (input_shape (H, W, C)), see ``resized``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TaskError(f"invalid dataset name {name!r}; embedded datasets: "
                        f"{', '.join(EMBEDDED)}; other names are TFDS dataset names")
    ds = _load_cached(name, str(resolve_data_dir(data_dir)))
    if image_size is not None:
        ds = _resized_cached(ds, tuple(int(v) for v in image_size))
    return ds


def resized(ds: Dataset, size: tuple[int, int]) -> Dataset:
    """Every image of ``ds`` (input_shape (H, W, C)) resized to ``size`` = (h, w) with
    antialiased bilinear interpolation (``jax.image.resize``), so a large dataset can feed a
    small model: e.g. 28x28 MNIST at 8x8 for models built for digits. Values stay in the
    original range; a constant image stays constant."""
    if len(ds.input_shape) != 3:
        raise TaskError(f"dataset {ds.name!r} has examples of shape {ds.input_shape}, not "
                        "images (H, W, C); image_size applies only to image datasets")
    if not (len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size)):
        raise TaskError(f"image_size must be two positive integers (h, w), got {size!r}")
    import jax
    H, W, C = ds.input_shape
    h, w = size

    def resize(x):
        out = []
        for i in range(0, len(x), 4096):   # bounded memory for large datasets
            chunk = x[i:i + 4096].reshape(-1, H, W, C)
            out.append(np.asarray(jax.image.resize(chunk, (len(chunk), h, w, C), "linear",
                                                   antialias=True)).reshape(len(chunk), -1))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, h * w * C), np.float32)

    xs = {f"x_{s}": resize(ds.split(s)[0]) for s in SPLITS}
    return dataclasses.replace(ds, input_shape=(h, w, C), **xs)


@functools.lru_cache(maxsize=8)
def _resized_cached(ds: Dataset, size: tuple[int, int]) -> Dataset:
    return resized(ds, size)


def clear_cache() -> None:
    """Forget in-process cached datasets (the .npz files stay)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, root: str) -> Dataset:
    root = Path(root)
    if name in EMBEDDED:
        version_dir = root / name / EMBEDDED_VERSIONS[name]
        if not (version_dir / "dataset_info.json").exists():
            _build_embedded(name, root)
    else:
        version_dir = find_prepared(root, name)
    cache = version_dir / CACHE_FILE
    if cache.exists():
        try:
            return _from_npz(name, cache)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it from the TFDS files below
    arrays = _read_tfds(name, version_dir.name, root)
    _write_npz(cache, arrays)
    return _from_arrays(name, arrays)


def find_prepared(root: Path, name: str) -> Path:
    """The newest version dir of ``name`` under ``root`` holding array_record files;
    raises DatasetNotFoundError (without touching TFDS or the network) otherwise."""
    base = root / name
    found, other_format = [], False
    if base.is_dir():
        for d in base.iterdir():
            if not (_VERSION_RE.fullmatch(d.name) and (d / "dataset_info.json").exists()):
                continue
            files = [f.name for f in d.iterdir()]
            if any(".array_record-" in f for f in files):
                found.append(d)
            elif files:
                other_format = True
    if found:
        return max(found, key=lambda d: tuple(int(v) for v in d.name.split(".")))
    raise DatasetNotFoundError(_missing_message(name, root, other_format))


def _missing_message(name: str, root: Path, other_format: bool) -> str:
    note = (f" A copy exists under {root / name} but not in array_record format; prepare it "
            "again with file_format='array_record'." if other_format else "")
    return (
        f"dataset {name!r} is not available in {root} (looked for "
        f"{root / name}/<version>/ with array_record files; nothing is downloaded at run "
        f"time).{note} Embedded datasets that always work offline: {', '.join(EMBEDDED)}. "
        "To provide a TFDS dataset, on a machine with internet run: python -c \"import "
        f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR', "
        "file_format='array_record').download_and_prepare()\", then copy DIR to this "
        f"machine and point {DATA_DIR_ENV}=DIR at it (or pass data_dir=DIR)."
    )


def _build_embedded(name: str, root: Path) -> None:
    """Build an embedded dataset once, under a file lock (parallel processes wait)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.lock", "w")
    except OSError as e:
        raise TaskError(f"cannot build dataset {name!r} in {root} ({e}); set {DATA_DIR_ENV} "
                        "to a writable directory") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / name / EMBEDDED_VERSIONS[name] / "dataset_info.json").exists():
            from tasks import tfds_builders
            tfds_builders.prepare(name, root)


def _read_tfds(name: str, version: str, root: Path) -> dict[str, np.ndarray]:
    """Read all splits through ``tfds.data_source`` and return the npz-ready arrays."""
    from tasks import tfds_builders
    raw, num_classes = tfds_builders.read_splits(name, version, root)
    if "train" not in raw or "test" not in raw:
        raise TaskError(f"dataset {name!r} needs 'train' and 'test' splits, has {sorted(raw)}")
    (x_train, y_train), (x_test, y_test) = raw["train"], raw["test"]
    if "validation" in raw and name in EMBEDDED:
        x_val, y_val = raw["validation"]
    else:  # carve a deterministic validation split out of train
        n = len(y_train)
        n_val = min(max(1, n // 10), MAX_VALIDATION)
        perm = np.random.default_rng(VALIDATION_SEED).permutation(n)
        val, keep = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_val, y_val, x_train, y_train = x_train[val], y_train[val], x_train[keep], y_train[keep]
    return {
        "x_train": x_train, "y_train": y_train, "x_validation": x_val, "y_validation": y_val,
        "x_test": x_test, "y_test": y_test, "num_classes": np.int64(num_classes),
        "input_shape": np.asarray(x_train.shape[1:], np.int64),
    }


def _flat01(x: np.ndarray) -> np.ndarray:
    """Flatten examples to rows; integer images are scaled to [0, 1] by their dtype max."""
    scale = np.iinfo(x.dtype).max if np.issubdtype(x.dtype, np.integer) else 1.0
    return (x.reshape(len(x), -1).astype(np.float32) / np.float32(scale)).astype(np.float32)


def _from_arrays(name: str, a) -> Dataset:
    fields = {k: _flat01(a[k]) if k.startswith("x_") else np.asarray(a[k], np.int32)
              for k in ("x_train", "y_train", "x_validation", "y_validation", "x_test", "y_test")}
    return Dataset(name=name, num_classes=int(a["num_classes"]),
                   input_shape=tuple(int(s) for s in a["input_shape"]), **fields)


def _from_npz(name: str, path: Path) -> Dataset:
    with np.load(path) as f:
        return _from_arrays(name, {k: f[k] for k in f.files})


def _write_npz(path: Path, arrays: dict) -> None:
    """Atomic write; a read-only data dir just means no disk cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
