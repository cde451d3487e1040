"""Atomic checkpoints of the whole meta-training state (theta, meta-optimizer state,
estimator state, RNG, step) as one .npz with a JSON header."""
from __future__ import annotations

import json
import zipfile

import jax
import numpy as np

from learned_opt.checkpoint import atomic_write as atomic_write_bytes

FORMAT = "lopt-train-state"
VERSION = 1


class StateFileError(ValueError):
    """A training-state file cannot be used (corrupt, foreign, or from another config)."""


def save_state(path: str, state, config_json: str) -> None:
    leaves, treedef = jax.tree.flatten(jax.device_get(state))
    header = {"format": FORMAT, "version": VERSION, "treedef": str(treedef),
              "num_leaves": len(leaves), "config": json.loads(config_json)}
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    atomic_write_bytes(path, lambda f: np.savez(f, __header__=np.array(json.dumps(header)), **arrays))


def read_header(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["__header__"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise StateFileError(f"{path}: not a readable training-state file ({e.__class__.__name__})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise StateFileError(f"{path}: not a {FORMAT} v{VERSION} file")
    return header


def load_state(path: str, template):
    """Restore a state with the same tree structure as ``template``."""
    header = read_header(path)
    leaves_t, treedef = jax.tree.flatten(template)
    if header["num_leaves"] != len(leaves_t) or header["treedef"] != str(treedef):
        raise StateFileError(f"{path}: saved state has another structure than this config's "
                             "(was it written by another architecture or config?)")
    try:
        with np.load(path, allow_pickle=False) as z:
            leaves = [z[f"leaf_{i}"] for i in range(len(leaves_t))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise StateFileError(f"{path}: corrupt training-state file ({e.__class__.__name__})") from None
    for a, t in zip(leaves, leaves_t):
        if a.shape != np.shape(t):
            raise StateFileError(f"{path}: array shape {a.shape} does not match {np.shape(t)}")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a, dtype=jax.numpy.result_type(t))
                                        for a, t in zip(leaves, leaves_t)])
