"""JAX's persistent compilation cache: compiled programs reused across processes.

Compiling the jitted outer step, a report's populations or a test's functions is most of the
wait on a CPU. With the cache on, XLA's compiled executable is written to a directory, keyed by
the program, the jax/jaxlib versions and the device, and a later process that builds the same
program loads it instead of compiling (a cold ``lopt train`` compile of the default config takes
seconds; a warm one a fraction of that). Results are identical: the cache stores the same
executable.

Where: ``$LOPT_COMPILE_CACHE`` if set (a directory; ``0``, ``off`` or an empty value turns the
cache off), else ``~/.cache/learned_opt/jax``. It is safe to delete at any time (the next run
compiles again); entries from other jax versions are never used. The ``lopt`` command and the
test suite call :func:`enable`; a library user opts in the same way::

    import learned_opt
    learned_opt.compile_cache.enable()          # or enable("/path/to/dir")

Every compilation that takes at least ``min_compile_secs`` (0.2 s by default; the many tiny
programs below that would cost more disk than they save) is stored.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax

DEFAULT_DIR = "~/.cache/learned_opt/jax"
ENV = "LOPT_COMPILE_CACHE"
_OFF = ("", "0", "off", "false", "no")


def cache_dir() -> Path | None:
    """The cache directory :func:`enable` uses by default: ``$LOPT_COMPILE_CACHE``, else
    ``~/.cache/learned_opt/jax``; None when the variable turns the cache off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    return Path(DEFAULT_DIR).expanduser()


def enable(path: str | os.PathLike | None = None, min_compile_secs: float = 0.2) -> Path | None:
    """Turn the persistent compilation cache on (``path``, else :func:`cache_dir`); returns
    the directory, or None when it is off (by ``$LOPT_COMPILE_CACHE``) or cannot be created
    (a read-only home: everything still works, it just compiles every time)."""
    where = Path(path).expanduser() if path is not None else cache_dir()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where


__all__ = ["DEFAULT_DIR", "ENV", "cache_dir", "enable"]
