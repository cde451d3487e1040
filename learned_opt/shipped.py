"""The meta-trained optimizers shipped in the repository's ``checkpoints/`` directory.

Each ``checkpoints/NAME/`` holds ``optimizer.npz`` (meta-parameters only), ``MODEL_CARD.md``
and the meta-training curves; ``learned_opt.load("NAME")`` finds them by name. The directory
is, in this order:

1. ``$LOPT_CHECKPOINTS`` if set;
2. ``learned_opt/checkpoints/`` inside the installed package: a built wheel carries each
   optimizer file, card and config there as package data (pyproject.toml);
3. ``checkpoints/`` of the source tree the package was imported from (a source checkout or an
   editable install), recognised by the ``pyproject.toml`` beside it.
"""
from __future__ import annotations

import os

from learned_opt.base import CheckpointError

ENV_VAR = "LOPT_CHECKPOINTS"
FILE = "optimizer.npz"


def shipped_dir() -> str:
    """The directory the shipped optimizers are read from (see the module docstring)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    package = os.path.dirname(os.path.abspath(__file__))
    inside = os.path.join(package, "checkpoints")
    if os.path.isdir(inside):
        return inside
    source = os.path.dirname(package)
    if os.path.isfile(os.path.join(source, "pyproject.toml")):
        return os.path.join(source, "checkpoints")
    return inside


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
