"""The project's file primitives: one atomic write, JSON-lines logs, and one archive format for
pytrees that both optimizer files (``learned_opt.checkpoint``) and meta-training state files
(``meta_train.state_io``) are built on.

Archive (an ``.npz``):

* ``__header__``: a JSON object ``{"format", "version", "leaves": [{"path", "shape", "dtype"}...],
  "treedef", "sha256", ...}`` plus the fields the caller adds;
* ``<prefix><path>``: one array per leaf, keyed by its tree path (``theta/mlp/linear_0/w``,
  ``state/est_state/xi/...``), so a file names what it holds and a structure mismatch is
  reported leaf by leaf.

``sha256`` covers every leaf's name and bytes: a truncated or altered file fails its checksum
instead of loading wrong numbers. Every write goes through :func:`atomic_write` (temp file in the
same directory, fsync, ``os.replace``): a crash leaves the old file or the new one. Every
problem a reader can hit raises the ``error`` class the caller passes, with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Callable

import jax
import numpy as np

from learned_opt.errors import LearnedOptError

HEADER_KEY = "__header__"
_ZIP_MAGIC = b"PK\x03\x04"


# ----------------------------------------------------------------------------- atomic write
def atomic_write(path: str, write_fn: Callable, before_replace: Callable | None = None) -> None:
    """Call ``write_fn(file)`` on a temp file beside ``path``, fsync, then rename over ``path``:
    readers see the old file or the new one, never a torn write. ``before_replace()`` runs
    once the new file is complete, just before the rename (e.g. to keep the old one aside)."""
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
        if before_replace is not None:
            before_replace()
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


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------- JSON lines
def read_jsonl(path: str) -> list[dict]:
    """Records of a JSON-lines file ([] if it does not exist); stops at a torn last line
    (what a killed writer leaves)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return out


def write_jsonl(path: str, records: list[dict]) -> None:
    """Replace ``path`` atomically with ``records``, one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- pytree archives
def path_str(path) -> str:
    """A tree path as ``a/b/0``."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaves_with_paths(tree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p), x) for p, x in flat]


def dtype_of(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _to_storable(x) -> np.ndarray:
    """numpy array; extension dtypes (bfloat16, ...) are stored as same-size uints."""
    a = np.asarray(jax.device_get(x))
    if type(a.dtype.type).__module__.startswith("ml_dtypes") or a.dtype.kind == "V":
        a = a.view(np.dtype(f"uint{8 * a.dtype.itemsize}"))
    return a


def digest(arrays: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, a in arrays:
        h.update(name.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def json_default(o):
    if isinstance(o, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_archive(path: str, tree, *, fmt: str, version: int, prefix: str, fields: dict,
                  error: type[LearnedOptError] = LearnedOptError,
                  before_replace: Callable | None = None) -> None:
    """Write ``tree`` atomically as an archive of format ``fmt`` v``version`` with extra JSON
    header ``fields``; leaves are stored under ``prefix + path`` (``before_replace``: see
    :func:`atomic_write`)."""
    leaves = leaves_with_paths(tree)
    arrays = [(prefix + p, _to_storable(x)) for p, x in leaves]
    try:
        header = json.dumps({
            "format": fmt, "version": version,
            **fields,
            "leaves": [{"path": p, "shape": list(np.shape(x)), "dtype": str(dtype_of(x))}
                       for p, x in leaves],
            "treedef": str(jax.tree.structure(tree)),
            "sha256": digest(arrays),
        }, default=json_default)
    except (TypeError, ValueError) as e:
        raise error(f"cannot save {path}: metadata is not JSON-serialisable ({e})") from None
    payload = {HEADER_KEY: np.array(header), **dict(arrays)}
    atomic_write(path, lambda f: np.savez(f, **payload), before_replace)


def read_archive(path: str, *, fmt: str, version: int, prefix: str, what: str, writer: str,
                 error: type[LearnedOptError] = LearnedOptError) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate an archive: its header and its leaves ``{path: array}`` (prefix
    stripped), checksum verified. ``what`` names the kind of file and ``writer`` the function
    that writes it, for the error messages."""
    if not os.path.exists(path):
        raise error(f"no checkpoint at {path} (expected a {what}); check the path")
    if os.path.isdir(path):
        raise error(f"{path} is a directory, not a {what}; pass the .npz file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _ZIP_MAGIC:
        raise error(f"{path} is not a {what} (not an .npz archive); pass a file written by {writer}")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if HEADER_KEY not in names:
                raise error(f"{path} is an .npz archive but not a {what} (no header); "
                            f"pass a file written by {writer}")
            header_text = str(z[HEADER_KEY][()])
            arrays = {n[len(prefix):]: z[n] for n in names if n.startswith(prefix)}
    except LearnedOptError:
        raise
    except Exception as e:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError ...
        raise error(f"{path} is corrupt or truncated ({type(e).__name__}: {e}); "
                    "restore it from a backup or re-save it") from None
    try:
        header = json.loads(header_text)
    except ValueError:
        raise error(f"{path} has an unreadable header; the file is corrupt, re-save it") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        got = header.get("format") if isinstance(header, dict) else None
        raise error(f"{path} is not a {what} (format {got!r}, expected {fmt!r}); "
                    f"pass a file written by {writer}")
    got_version = header.get("version")
    if got_version != version:
        hint = ("upgrade learned_opt to read it" if isinstance(got_version, int) and got_version > version
                else "re-save it with this version of learned_opt")
        raise error(f"{path} has {fmt} format version {got_version!r}; this code reads version "
                    f"{version}; {hint}")
    try:
        want = [(prefix + d["path"], arrays[d["path"]]) for d in header["leaves"]]
        expected = header["sha256"]
    except (KeyError, TypeError) as e:
        raise error(f"{path} is incomplete (missing {e}); the file is corrupt, re-save it") from None
    if len(arrays) != len(want) or digest(want) != expected:
        raise error(f"{path} failed its checksum; the file is corrupt, re-save it")
    return header, arrays


def check_leaves(expected, got, what: str, against: str, hint: str,
                 error: type[LearnedOptError] = LearnedOptError) -> None:
    """Compare lists of (path, shape, dtype); raise a one-line error on the first mismatch:
    ``"{what} does not match {against}: ...; {hint}"``."""
    exp = {p: (tuple(s), np.dtype(d)) for p, s, d in expected}
    have = {p: (tuple(s), np.dtype(d)) for p, s, d in got}
    if set(exp) != set(have):
        missing, extra = sorted(set(exp) - set(have)), sorted(set(have) - set(exp))
        raise error(f"{what} does not match {against}: missing leaves {missing[:5]}, unexpected "
                    f"leaves {extra[:5]}; {hint}")
    for p in exp:
        if exp[p] != have[p]:
            raise error(f"{what} does not match {against}: leaf {p!r} is {have[p][0]} {have[p][1]}, "
                        f"expected {exp[p][0]} {exp[p][1]}; {hint}")


def tree_from_archive(template, header: dict, arrays: dict, what: str, against: str, hint: str,
                      error: type[LearnedOptError] = LearnedOptError):
    """The tree with ``template``'s structure (arrays or ShapeDtypeStructs) from an archive read
    by :func:`read_archive`, after checking every leaf's path, shape and dtype."""
    tmpl = leaves_with_paths(template)
    saved = [(d["path"], d["shape"], d["dtype"]) for d in header["leaves"]]
    check_leaves([(p, np.shape(t), dtype_of(t)) for p, t in tmpl], saved, what, against, hint, error)
    leaves = []
    for p, t in tmpl:
        a = arrays[p]
        if a.dtype != dtype_of(t):  # extension dtype stored as uint bits
            a = a.view(dtype_of(t))
        leaves.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


__all__ = ["atomic_write", "atomic_write_text", "read_jsonl", "write_jsonl", "write_archive",
           "read_archive", "check_leaves", "tree_from_archive", "leaves_with_paths", "path_str"]
