"""Character-level text corpora built from the Python standard library: nothing is downloaded.

Source: the ``.py`` files of a fixed list of 34 standard-library modules (``STDLIB_FILES``),
read from ``sysconfig.get_paths()["stdlib"]`` as files (never imported, so ``-OO`` does not
matter). Two corpora:

- ``"stdlib_docs"``: every module/class/function docstring of those files
  (``ast.get_docstring``, cleaned of indentation), in source order, file by file, each
  followed by a blank line. English prose with some code examples. On CPython 3.11.7:
  415,689 characters (17 outside the vocabulary).
- ``"stdlib_code"``: the files' full source text, file by file, each followed by a newline.
  On CPython 3.11.7: 1,984,349 characters.

The text is fixed for a given Python version (the stdlib files are), so a corpus is
deterministic per version; its size changes slightly across versions. A missing or unreadable
file (an embedded or stripped Python) raises ``TaskError`` naming the file.

Vocabulary (``VOCAB_SIZE`` = 97): id 0 = any other character (tab, non-ASCII), id 1 = newline,
ids 2..96 = printable ASCII ``chr(32) .. chr(126)``. Splits are by position: the first 80% of
the encoded corpus is ``train``, the next 10% ``validation``, the last 10% ``test``.
"""
from __future__ import annotations

import ast
import functools
import os
import sysconfig

import numpy as np

from tasks.base import TaskError

STDLIB_FILES = (
    "typing.py", "doctest.py", "difflib.py", "logging/__init__.py", "inspect.py",
    "ipaddress.py", "statistics.py", "threading.py", "email/message.py", "smtplib.py",
    "configparser.py", "tarfile.py", "os.py", "subprocess.py", "shutil.py", "urllib/parse.py",
    "collections/__init__.py", "argparse.py", "json/__init__.py", "traceback.py", "enum.py",
    "datetime.py", "pathlib.py", "functools.py", "random.py", "textwrap.py", "dataclasses.py",
    "contextlib.py", "string.py", "heapq.py", "fractions.py", "calendar.py", "pprint.py",
    "zipfile.py",
)
CORPORA = ("stdlib_docs", "stdlib_code")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
VOCAB_SIZE = 97
OTHER_ID, NEWLINE_ID, FIRST_PRINTABLE_ID = 0, 1, 2

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _read(relpath: str) -> str:
    path = os.path.join(stdlib_dir(), relpath)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(
            f"text corpus: cannot read the standard-library source file {path} ({e}); this "
            "Python installation lacks the stdlib .py sources (embedded or stripped build). "
            "Use a full CPython install (e.g. Debian/Ubuntu: apt install libpython3-stdlib) "
            "or a task that does not need the text corpus") from None


def _docstrings(source: str, relpath: str) -> list[str]:
    """Docstrings of the module and of every class/function, in source order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise TaskError(f"text corpus: cannot parse {relpath} from the standard library "
                        f"({e}); is this Python's stdlib intact?") from None
    found = [(getattr(n, "lineno", 0), ast.get_docstring(n, clean=True))
             for n in ast.walk(tree) if isinstance(n, _DOC_NODES)]
    return [doc for _, doc in sorted(found, key=lambda t: t[0]) if doc]


@functools.lru_cache(maxsize=None)
def load_text(name: str = "stdlib_docs") -> str:
    """The corpus ``name`` (one of ``CORPORA``) as a string; cached in-process."""
    if name not in CORPORA:
        raise TaskError(f"unknown text corpus {name!r}; choose one of {', '.join(CORPORA)}")
    parts = []
    for relpath in STDLIB_FILES:
        source = _read(relpath)
        if name == "stdlib_code":
            parts.append(source + "\n")
        else:
            parts.extend(doc + "\n\n" for doc in _docstrings(source, relpath))
    return "".join(parts)


def encode(text: str) -> np.ndarray:
    """Characters -> int32 ids in [0, VOCAB_SIZE) (see the module docstring)."""
    code = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
    printable = (code >= 32) & (code < 127)
    ids = np.where(printable, code - 32 + FIRST_PRINTABLE_ID,
                   np.where(code == 10, NEWLINE_ID, OTHER_ID))
    return ids.astype(np.int32)


def decode(ids) -> str:
    """Inverse of ``encode`` on the vocabulary; id 0 (other) becomes U+FFFD."""
    table = ["\ufffd", "\n"] + [chr(c) for c in range(32, 127)]
    return "".join(table[int(i)] for i in np.asarray(ids).ravel())


@functools.lru_cache(maxsize=None)
def corpus_splits(name: str = "stdlib_docs") -> dict[str, np.ndarray]:
    """{split: int32 ids}: contiguous 80% / 10% / 10% of the encoded corpus, in order."""
    ids = encode(load_text(name))
    ids.flags.writeable = False
    n = len(ids)
    a = int(n * SPLIT_FRACTIONS[0])
    b = a + int(n * SPLIT_FRACTIONS[1])
    return {"train": ids[:a], "validation": ids[a:b], "test": ids[b:]}
