"""The persistent compilation cache (learned_opt.compile_cache): where it lives, that it is
written by one process and read by the next, and that it can be turned off."""
import os
import subprocess
import sys

from learned_opt import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program big enough to be worth caching (min_compile_secs=0 stores everything anyway).
PROGRAM = """
import jax, jax.numpy as jnp
from learned_opt import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(1) if name == "/jax/compilation_cache/cache_hits" else None)
where = compile_cache.enable(min_compile_secs=0.0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * {salt})
print(where, float(f(jnp.ones((7, 5)))), len(hits))
"""


def run(env_value, salt=3):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env[compile_cache.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROGRAM.format(salt=salt)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def entries(path):
    return sorted(p for p in os.listdir(path) if p.endswith("-cache")) if os.path.isdir(path) else []


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.cache_dir() == tmp_path / "c"
    for off in ("0", "off", ""):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.cache_dir() is None
    monkeypatch.delenv(compile_cache.ENV)
    assert str(compile_cache.cache_dir()).endswith(os.path.join(".cache", "learned_opt", "jax"))


def test_written_by_one_process_and_reused_by_the_next(tmp_path):
    where = str(tmp_path / "cache")
    first = run(where)
    assert first[0] == where and first[2] == "0"   # compiled, no cache hit
    written = entries(where)
    assert written, "the first process stored its compiled program"
    second = run(where)
    assert second[1] == first[1]           # same result from the loaded executable
    assert int(second[2]) == len(written)  # ... every program came from the cache
    assert entries(where) == written
    third = run(where, salt=5)             # another program: compiled, another entry
    assert int(third[2]) == int(second[2]) - 1    # every program but the new one was a hit
    assert len(entries(where)) == len(written) + 1


def test_turned_off(tmp_path):
    out = run("0")
    assert out[0] == "None" and out[2] == "0"
    assert not any(p.endswith("-cache") for p in os.listdir(tmp_path))
