"""A cache of tuned Adam's runs on a suite: the part of an evaluation that does not depend on the
optimizers being evaluated.

``compare.run_suite`` runs Adam over the learning-rate grid ``G`` for ``adam_factor * T`` steps on
every task and seed of a suite. From those runs it keeps, per task ``i``:

    envelope_i(s)  = the speedup reference (``speedup.reference_envelope``), s < adam_factor * T
    best_i         = argmin_k  mean_seeds final_loss(grid run k of task i, first T steps)
    Adam lr=1e-3 and Adam at G[best_i]: curves (seeds, T), held-out and final training losses

That is most of a bench's time (``len(G) * adam_factor`` Adam runs per task against one run of
each learned optimizer and one per guard), and none of it changes when a new optimizer is
benched. With a cache directory those arrays are written to one ``.npz`` per suite and read
back by any later run whose **key** matches: the SHA-256 of everything the runs depend on

    suite (family, kwargs, steps, seed), tasks and seeds evaluated, adam_factor, G,
    jax / jaxlib / optax / numpy versions, backend and device kind,
    the source of the ``tasks`` package and of compare.py, curves.py, speedup.py

so editing a task, the training loop or the metric, or moving to another machine or jax,
recomputes rather than reuses. A damaged, foreign or mismatched file is reported on one line
and recomputed; files are written atomically. Off unless a directory is given (``lopt bench
--reference-cache DIR``)."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from typing import Callable, NamedTuple

import jax
import numpy as np

from learned_opt.files import atomic_write

FORMAT = "lopt-adam-reference-v1"
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = ("compare.py", "curves.py", "speedup.py")


class AdamReference(NamedTuple):
    """Tuned and default Adam on a suite's tasks (``n`` tasks, ``s`` seeds, ``T`` steps)."""
    envelopes: np.ndarray     # (n, adam_factor * T) speedup reference
    best: np.ndarray          # (n,) int: index into the grid of each task's tuned rate
    default: tuple            # (losses (n, s, T), test (n, s), final (n, s)) at lr 1e-3
    tuned: tuple              # the same at each task's tuned rate


def _source_digest() -> str:
    import tasks
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(tasks.__file__)), "*.py")))
    files += [os.path.join(_HERE, f) for f in _SOURCES]
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def _versions() -> dict:
    import jaxlib
    import optax
    dev = jax.devices()[0]
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev))}


def reference_key(suite, num_tasks: int, num_seeds: int, adam_factor: int, grid) -> tuple[str, dict]:
    """(hex SHA-256, the settings it hashes) of Adam's runs on the first ``num_tasks`` tasks of
    ``suite`` with ``num_seeds`` seeds (see the module docstring)."""
    settings = {"format": FORMAT,
                "suite": [suite.name, suite.family, suite.family_kwargs, suite.num_steps, suite.seed],
                "num_tasks": int(num_tasks), "num_seeds": int(num_seeds),
                "adam_factor": int(adam_factor), "grid": [float(x) for x in grid],
                "versions": _versions(), "source": _source_digest()}
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), settings


def cache_path(cache_dir: str, suite_name: str, key: str) -> str:
    return os.path.join(cache_dir, f"{suite_name}-{key[:16]}.npz")


def load(path: str, key: str, say: Callable[[str], None]) -> AdamReference | None:
    """The cached reference at ``path`` if it is there, readable and made under ``key``; else
    None (a file that is there but unusable is reported through ``say``)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                raise ValueError("made under other settings")
            ref = AdamReference(z["envelopes"], z["best"],
                                tuple(z[f"default_{f}"] for f in ("losses", "test", "final")),
                                tuple(z[f"tuned_{f}"] for f in ("losses", "test", "final")))
    except Exception as e:  # noqa: BLE001 - any damage means: recompute
        say(f"reference cache {path} not used ({type(e).__name__}: {e}); recomputing")
        return None
    return ref


def save(path: str, key: str, settings: dict, ref: AdamReference) -> None:
    """Write ``ref`` atomically (a reader sees the old file or the new one)."""
    arrays = {"key": np.asarray(key), "settings": np.asarray(json.dumps(settings)),
              "envelopes": np.asarray(ref.envelopes), "best": np.asarray(ref.best)}
    for name, part in (("default", ref.default), ("tuned", ref.tuned)):
        for f, x in zip(("losses", "test", "final"), part):
            arrays[f"{name}_{f}"] = np.asarray(x)

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getvalue())

    atomic_write(path, write)


__all__ = ["AdamReference", "FORMAT", "reference_key", "cache_path", "load", "save"]
