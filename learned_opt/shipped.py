"""The meta-trained optimizers shipped in the repository's ``checkpoints/`` directory.

Each ``checkpoints/NAME/`` holds ``optimizer.npz`` (meta-parameters only), ``MODEL_CARD.md``
and the meta-training curves; ``learned_opt.load("NAME")`` finds them by name. The directory
is looked up as ``$LOPT_CHECKPOINTS`` if set, else ``checkpoints/`` beside the installed
``learned_opt`` package (a source checkout or an editable install, as the README installs).
"""
from __future__ import annotations

import os

from learned_opt.base import CheckpointError

ENV_VAR = "LOPT_CHECKPOINTS"
FILE = "optimizer.npz"


def shipped_dir() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")


def shipped_names() -> list[str]:
    """Names of the shipped optimizers (sub-directories holding an optimizer.npz)."""
    d = shipped_dir()
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n, FILE)))


def looks_like_name(text: str) -> bool:
    """A bare name (no directory part, no file extension) rather than a path."""
    return bool(text) and os.sep not in text and "/" not in text and "." not in text


def shipped_path(name: str) -> str:
    """The optimizer file of shipped optimizer ``name``; CheckpointError listing the names if
    there is none."""
    path = os.path.join(shipped_dir(), name, FILE)
    if not os.path.isfile(path):
        names = shipped_names()
        raise CheckpointError(
            f"no shipped optimizer named {name!r} in {shipped_dir()} "
            f"(shipped: {names or 'none found; set ' + ENV_VAR + ' to the checkpoints/ directory'}); "
            "pass a path to an .npz file to load your own")
    return path


def resolve(path_or_name: str) -> str:
    """A checkpoint path as given, or the file of the shipped optimizer of that name."""
    if not os.path.exists(path_or_name) and looks_like_name(path_or_name):
        return shipped_path(path_or_name)
    return path_or_name


__all__ = ["shipped_dir", "shipped_names", "shipped_path", "looks_like_name", "resolve", "ENV_VAR"]
