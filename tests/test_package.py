"""The built wheel is a real package: it carries every shipped optimizer (file, card, config) as
package data, and ``learned_opt.load(NAME)`` finds them from the installed wheel alone, away
from the source tree, for one optax training step each."""
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

import learned_opt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


PACKAGES = ("learned_opt", "tasks", "meta_train")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from a copy of the sources (setuptools' build/ and egg-info stay out of the checkout)."""
    src = tmp_path_factory.mktemp("src") / "learned_opt_src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "train_state*", "bench", "report", "*.png",
                                  "metrics.jsonl")
    for name in (*PACKAGES, "checkpoints"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = [p for p in out.iterdir() if p.suffix == ".whl"]
    return path


def test_wheel_carries_every_shipped_optimizer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = learned_opt.shipped_names()
    assert {"general", "mlp", "adafactor_mlp"} <= set(shipped)
    for name in shipped:
        for f in ("optimizer.npz", "MODEL_CARD.md", "config.json"):
            assert f"learned_opt/checkpoints/{name}/{f}" in names, (name, f)
    # every module of every package (pyproject lists the packages explicitly)
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
                    assert rel in names, rel
    assert not any("train_state" in n or n.endswith(".png") for n in names)   # only what users load


def test_installed_wheel_finds_its_optimizers_outside_the_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = textwrap.dedent("""
        import os, jax, jax.numpy as jnp, optax, learned_opt
        from learned_opt.shipped import shipped_dir
        assert learned_opt.__file__.startswith(os.environ["SITE"]), learned_opt.__file__
        assert shipped_dir().startswith(os.environ["SITE"]), shipped_dir()
        params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        loss = lambda p: jnp.sum((jnp.ones(3) @ p["w"] + p["b"] - 1.0) ** 2)
        for name in learned_opt.shipped_names():
            tx = learned_opt.load(name).as_optax(num_steps=10)
            value, grads = jax.value_and_grad(loss)(params)
            updates, _ = tx.update(grads, tx.init(params), params, value=value)
            after = loss(optax.apply_updates(params, updates))
            print(name, float(value), float(after))
    """)
    env = {**os.environ, "PYTHONPATH": str(site), "SITE": str(site)}
    env.pop("LOPT_CHECKPOINTS", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict((ln.split()[0], ln.split()[1:]) for ln in proc.stdout.splitlines())
    assert set(lines) == set(learned_opt.shipped_names())
    for name, (before, after) in lines.items():
        assert float(after) != float(before), name     # each optimizer took a real step
