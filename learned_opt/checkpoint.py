"""Checkpoint I/O for meta-parameters theta (format ``learned-opt-theta``, v1).

A checkpoint is one ``.npz`` archive holding

* ``__header__``: a JSON string ``{"format", "version", "architecture", "config",
  "leaves": [{"path", "shape", "dtype"}...], "treedef", "sha256", "metadata", ...}``
* ``theta/<path>``: one array per leaf of theta, keyed by its tree path
  (e.g. ``theta/mlp/linear_0/w``).

It is written atomically (temp file in the same directory, fsync, ``os.replace``),
so a crash leaves either the old file or the new one. ``load`` rebuilds the
optimizer from the registry, so the caller need not know its class; the tree
structure is taken from ``lopt.init`` and checked leaf by leaf against the file.
Every problem a user can hit raises :class:`CheckpointError` with a one-line message.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from typing import Any, NamedTuple

import jax
import numpy as np

from learned_opt.base import (CheckpointError, LearnedOptError, LearnedOptimizer,
                              architectures, config_from_dict, config_to_dict)
from learned_opt.shipped import resolve

FORMAT = "learned-opt-theta"
VERSION = 1
HEADER_KEY = "__header__"
LEAF_PREFIX = "theta/"
_ZIP_MAGIC = b"PK\x03\x04"

PyTree = Any


# ----------------------------------------------------------------------------- helpers
def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _leaves_with_paths(tree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(_path_str(p), x) for p, x in flat]


def _dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _to_storable(x) -> np.ndarray:
    """numpy array; extension dtypes (bfloat16, ...) are stored as same-size uints."""
    a = np.asarray(jax.device_get(x))
    if type(a.dtype.type).__module__.startswith("ml_dtypes") or a.dtype.kind == "V":
        a = a.view(np.dtype(f"uint{8 * a.dtype.itemsize}"))
    return a


def _digest(arrays: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, a in arrays:
        h.update(name.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _template(lopt: LearnedOptimizer):
    """Shapes/dtypes/treedef of theta, without computing it."""
    return jax.eval_shape(lopt.init, jax.random.PRNGKey(0))


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(file)`` on a temp file beside ``path``, fsync, then rename over ``path``:
    readers see the old file or the new one, never a torn write."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (best effort, POSIX only)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- save
def save(path: str, lopt: LearnedOptimizer, theta: PyTree, metadata: dict | None = None) -> None:
    """Write ``theta`` of ``lopt`` to ``path`` atomically, with JSON-able ``metadata``
    (e.g. ``{"outer_steps": 1000, "family": "mlp_digits"}``)."""
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"metadata must be a dict, got {type(metadata).__name__}")
    tmpl = _leaves_with_paths(_template(lopt))
    leaves = _leaves_with_paths(theta)
    _check_leaves(lopt, [(p, t.shape, t.dtype) for p, t in tmpl],
                  [(p, np.shape(x), _dtype(x)) for p, x in leaves],
                  "theta to save")
    arrays = [(LEAF_PREFIX + p, _to_storable(x)) for p, x in leaves]
    try:
        header = json.dumps({
            "format": FORMAT,
            "version": VERSION,
            "architecture": lopt.architecture,
            "config": config_to_dict(lopt.config),
            "leaves": [{"path": p, "shape": list(np.shape(x)), "dtype": str(_dtype(x))}
                       for p, x in leaves],
            "treedef": str(jax.tree.structure(theta)),
            "sha256": _digest(arrays),
            "metadata": metadata or {},
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "jax_version": jax.__version__,
        }, default=_json_default)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save {path}: metadata is not JSON-serialisable ({e})") from None
    payload = {HEADER_KEY: np.array(header), **dict(arrays)}
    atomic_write(path, lambda f: np.savez(f, **payload))


# ----------------------------------------------------------------------------- load
def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate the header and raw arrays (no optimizer needed)."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; check the path")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; pass the .npz file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a learned-optimizer checkpoint (not an .npz archive); "
            "pass a file written by learned_opt.save")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if HEADER_KEY not in names:
                raise CheckpointError(
                    f"{path} is an .npz archive but not a learned-optimizer checkpoint "
                    "(no header); pass a file written by learned_opt.save")
            header_text = str(z[HEADER_KEY][()])
            arrays = {n[len(LEAF_PREFIX):]: z[n] for n in names if n.startswith(LEAF_PREFIX)}
    except CheckpointError:
        raise
    except Exception as e:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError ...
        raise CheckpointError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}); "
            "restore it from a backup or re-save it") from None
    try:
        header = json.loads(header_text)
    except ValueError:
        raise CheckpointError(f"{path} has an unreadable header; the file is corrupt, re-save it") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        fmt = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(
            f"{path} is not a learned-optimizer checkpoint (format {fmt!r}, expected {FORMAT!r}); "
            "pass a file written by learned_opt.save")
    version = header.get("version")
    if version != VERSION:
        hint = ("upgrade learned_opt to read it" if isinstance(version, int) and version > VERSION
                else "re-save it with this version of learned_opt")
        raise CheckpointError(
            f"{path} has {FORMAT} format version {version!r}; this code reads version {VERSION}; {hint}")
    try:
        want = [(LEAF_PREFIX + d["path"], arrays[d["path"]]) for d in header["leaves"]]
        expected = header["sha256"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is incomplete (missing {e}); the file is corrupt, re-save it") from None
    if len(arrays) != len(want) or _digest(want) != expected:
        raise CheckpointError(f"{path} failed its checksum; the file is corrupt, re-save it")
    return header, arrays


def read_header(path: str) -> dict:
    """The validated JSON header of a checkpoint (architecture, config, metadata, ...)."""
    return _read(path)[0]


def _check_leaves(lopt, expected, got, what: str) -> None:
    """Compare lists of (path, shape, dtype); raise a one-line error on the first mismatch."""
    exp = {p: (tuple(s), np.dtype(d)) for p, s, d in expected}
    have = {p: (tuple(s), np.dtype(d)) for p, s, d in got}
    desc = f"architecture {lopt.architecture!r} with config {json.dumps(config_to_dict(lopt.config))}"
    if set(exp) != set(have):
        missing, extra = sorted(set(exp) - set(have)), sorted(set(have) - set(exp))
        raise CheckpointError(
            f"{what} does not match {desc}: missing leaves {missing[:5]}, unexpected leaves "
            f"{extra[:5]}; use the optimizer the theta was made for")
    for p in exp:
        if exp[p] != have[p]:
            raise CheckpointError(
                f"{what} does not match {desc}: leaf {p!r} is {have[p][0]} {have[p][1]}, expected "
                f"{exp[p][0]} {exp[p][1]}; use the optimizer the theta was made for")


def _build_theta(path: str, header: dict, arrays: dict, lopt: LearnedOptimizer) -> PyTree:
    tmpl = _template(lopt)
    tmpl_leaves = _leaves_with_paths(tmpl)
    saved = [(d["path"], d["shape"], d["dtype"]) for d in header["leaves"]]
    _check_leaves(lopt, [(p, t.shape, t.dtype) for p, t in tmpl_leaves], saved,
                  f"checkpoint {path}")
    leaves = []
    for p, t in tmpl_leaves:
        a = arrays[p]
        if a.dtype != t.dtype:  # extension dtype stored as uint bits
            a = a.view(t.dtype)
        leaves.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(tmpl), leaves)


def _optimizer_from_header(path: str, header: dict) -> LearnedOptimizer:
    arch = header.get("architecture")
    known = architectures()
    if arch not in known:
        raise CheckpointError(
            f"{path} holds architecture {arch!r}, which is not registered here (known: "
            f"{sorted(known)}); import the module that defines it before loading")
    cls = known[arch]
    try:
        return cls(config_from_dict(cls.Config, header.get("config") or {}))
    except (LearnedOptError, TypeError) as e:
        raise CheckpointError(
            f"{path} has a config that {cls.__name__} cannot use ({e}); "
            "the checkpoint is from an incompatible version of this architecture") from None


class Loaded(NamedTuple):
    """What :func:`load` returns: unpacks as ``lopt, theta, metadata``, and is ready for optax."""
    lopt: LearnedOptimizer
    theta: PyTree
    metadata: dict

    def as_optax(self):
        """The optimizer as an optax ``GradientTransformationExtraArgs`` (see ``as_optax``)."""
        return self.lopt.as_optax(self.theta)

    def guarded(self, fallback=None):
        """Loss-guarded (LGL2O) version with ``fallback`` (default Adam 1e-3); pass
        ``value_fn`` to its update (see ``learned_opt.loss_guard``)."""
        from learned_opt.loss_guard import guarded
        return guarded(self.lopt, self.theta, fallback)


def load(path: str) -> Loaded:
    """Restore ``(lopt, theta, metadata)`` from a checkpoint file, or from the shipped
    optimizer of that name (``learned_opt.load("mlp")``, see ``learned_opt.shipped``); the
    optimizer is rebuilt from the registry.

        tx = learned_opt.load("mlp").as_optax()          # any optax training loop
    """
    path = resolve(path)
    header, arrays = _read(path)
    lopt = _optimizer_from_header(path, header)
    return Loaded(lopt, _build_theta(path, header, arrays, lopt), dict(header.get("metadata") or {}))


def load_theta(path: str, lopt: LearnedOptimizer) -> PyTree:
    """Load theta for the given optimizer; its architecture and config must match the file's."""
    header, arrays = _read(path)
    if header.get("architecture") != lopt.architecture:
        raise CheckpointError(
            f"{path} holds a {header.get('architecture')!r} optimizer, not {lopt.architecture!r}; "
            "use learned_opt.load(path) to rebuild the optimizer it was saved with")
    mine = json.loads(json.dumps(config_to_dict(lopt.config), default=_json_default))
    theirs = header.get("config") or {}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        detail = ", ".join(f"{k}: file {theirs.get(k)!r} vs optimizer {mine.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{path} was saved with a different {lopt.architecture!r} config ({detail}); "
            "use learned_opt.load(path) to rebuild the matching optimizer")
    return _build_theta(path, header, arrays, lopt)
