"""Meta-training state files: the whole training state (theta, meta-optimizer state, estimator
state, RNG, step) in one archive of the project's single file format (``learned_opt.files``:
path-keyed leaves such as ``state/est_state/xi/...``, a sha256 checksum, a format version, written
atomically), with the run's config in the header."""
from __future__ import annotations

import json

import jax

from learned_opt import files
from learned_opt.errors import LearnedOptError

FORMAT = "lopt-train-state"
VERSION = 2          # v1 (leaf_i keys, no checksum) predates the shared archive format
PREFIX = "state/"


class StateFileError(LearnedOptError):
    """A training-state file cannot be used (corrupt, foreign, or from another config)."""


def save_state(path: str, state, config_json: str, before_replace=None) -> None:
    """Write the state atomically (``before_replace``: see ``learned_opt.files.atomic_write``)."""
    files.write_archive(path, jax.device_get(state), fmt=FORMAT, version=VERSION, prefix=PREFIX,
                        fields={"config": json.loads(config_json)}, error=StateFileError,
                        before_replace=before_replace)


def _read(path: str):
    return files.read_archive(path, fmt=FORMAT, version=VERSION, prefix=PREFIX,
                              what="training-state file", writer="`lopt train`", error=StateFileError)


def load_state(path: str, template):
    """Restore a state with the same tree structure (paths, shapes, dtypes) as ``template``."""
    header, arrays = _read(path)
    return files.tree_from_archive(template, header, arrays, f"training state {path}",
                                   "this run's config",
                                   "was it written by another architecture or config?", StateFileError)
