"""Checkpoint I/O of meta-parameters: round trips, and every bad file is a CheckpointError."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import CheckpointError, checkpoint
from learned_opt.base import LearnedOptimizer, register
from learned_opt.mlp import MLP

KEY = jax.random.PRNGKey(0)


@dataclasses.dataclass(frozen=True)
class _OtherConfig:
    width: int = 3


@register
class _OtherLOpt(LearnedOptimizer):
    """A stand-in for another architecture (only init matters for checkpoints)."""

    architecture = "_test_other"
    Config = _OtherConfig

    def init(self, key):
        return {"scale": jnp.ones((self.config.width,))}


def assert_one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and len(msg) > 20, msg


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved(tmp_path):
    lopt = MLP(hidden_sizes=(8, 4), decays=(0.5, 0.9, 0.99), step_mult=0.01)
    theta = lopt.init(KEY)
    path = str(tmp_path / "opt.npz")
    learned_opt.save(path, lopt, theta, {"outer_steps": 1234, "family": "quadratic",
                                         "loss": np.float32(0.5)})
    return path, lopt, theta


def test_round_trip(saved):
    path, lopt, theta = saved
    lopt2, theta2, meta = learned_opt.load(path)
    assert isinstance(lopt2, MLP) and lopt2.config == lopt.config
    assert_trees_equal(theta, theta2)
    assert meta == {"outer_steps": 1234, "family": "quadratic", "loss": 0.5}
    assert_trees_equal(theta, learned_opt.load_theta(path, lopt))
    header = learned_opt.read_header(path)
    assert header["format"] == "learned-opt-theta" and header["version"] == 1
    assert header["architecture"] == "mlp"
    assert [d["path"] for d in header["leaves"]][0] == "mlp/linear_0/b"
    # the loaded optimizer produces identical steps
    p = {"w": jnp.arange(6.0).reshape(2, 3)}
    g = {"w": jnp.ones((2, 3))}
    a, _ = jax.jit(lopt.opt_update)(theta, lopt.opt_init(theta, p), g, p, 0.0, KEY)
    b, _ = jax.jit(lopt2.opt_update)(theta2, lopt2.opt_init(theta2, p), g, p, 0.0, KEY)
    assert_trees_equal(a, b)


def test_overwrite_is_atomic_and_leaves_no_temp_files(saved, monkeypatch):
    path, lopt, theta = saved
    directory = os.path.dirname(path)
    theta_b = jax.tree.map(lambda x: x + 1.0, theta)
    learned_opt.save(path, lopt, theta_b, {"outer_steps": 2})
    assert os.listdir(directory) == ["opt.npz"]
    assert learned_opt.load(path)[2] == {"outer_steps": 2}

    # a crash in the middle of writing keeps the old file intact and cleans up the temp file
    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        learned_opt.save(path, lopt, theta, {"outer_steps": 3})
    monkeypatch.undo()
    assert os.listdir(directory) == ["opt.npz"]
    lopt2, theta2, meta = learned_opt.load(path)
    assert meta == {"outer_steps": 2}
    assert_trees_equal(theta_b, theta2)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint") as e:
        learned_opt.load(str(tmp_path / "nope.npz"))
    assert_one_line(e)


def test_truncated_file(saved):
    path = saved[0]
    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
            learned_opt.load(path)
        assert_one_line(e)


def test_corrupt_array_bytes(saved):
    path, _, theta = saved
    data = bytearray(open(path, "rb").read())
    w = np.asarray(theta["mlp"]["linear_0"]["w"]).tobytes()
    i = data.find(w)
    assert i > 0
    data[i + len(w) // 2] ^= 0xFF          # flip one byte inside a weight matrix
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as e:
        learned_opt.load(path)
    assert_one_line(e)


def test_random_bytes(tmp_path):
    path = str(tmp_path / "random.npz")
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a learned-optimizer checkpoint") as e:
        learned_opt.load(path)
    assert_one_line(e)
    empty = str(tmp_path / "empty.npz")
    open(empty, "wb").close()
    with pytest.raises(CheckpointError, match="not a learned-optimizer checkpoint"):
        learned_opt.load(empty)


def test_foreign_npz(tmp_path):
    path = str(tmp_path / "foreign.npz")
    np.savez(path, a=np.arange(3), b=np.ones((2, 2)))
    with pytest.raises(CheckpointError, match="no header") as e:
        learned_opt.load(path)
    assert_one_line(e)
    # an npz with a header of some other format (e.g. a meta-training state file)
    np.savez(path, __header__=np.array(json.dumps({"format": "lopt-train-state", "version": 1})))
    with pytest.raises(CheckpointError, match="format 'lopt-train-state'") as e:
        learned_opt.load(path)
    assert_one_line(e)


def rewrite_header(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["__header__"]))
    header.update(changes)
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(path, **arrays)


def test_unknown_format_version(saved):
    path = saved[0]
    rewrite_header(path, version=99)
    with pytest.raises(CheckpointError, match="version 99.*upgrade") as e:
        learned_opt.load(path)
    assert_one_line(e)


def test_other_architecture(tmp_path):
    other = _OtherLOpt(width=5)
    path = str(tmp_path / "other.npz")
    learned_opt.save(path, other, other.init(KEY))
    lopt, theta, _ = learned_opt.load(path)          # the registry rebuilds it
    assert isinstance(lopt, _OtherLOpt) and theta["scale"].shape == (5,)
    with pytest.raises(CheckpointError, match="'_test_other' optimizer, not 'mlp'") as e:
        learned_opt.load_theta(path, MLP())
    assert_one_line(e)
    rewrite_header(path, architecture="lstm_from_the_future")
    with pytest.raises(CheckpointError, match="not registered") as e:
        learned_opt.load(path)
    assert_one_line(e)


def test_incompatible_config(saved):
    path, lopt, _ = saved
    with pytest.raises(CheckpointError, match="hidden_sizes") as e:
        learned_opt.load_theta(path, MLP())       # default (32, 32) vs saved (8, 4)
    assert_one_line(e)
    # a header whose config no longer matches the stored arrays
    rewrite_header(path, config=dict(learned_opt.config_to_dict(lopt.config), hidden_sizes=[16]))
    with pytest.raises(CheckpointError, match="does not match") as e:
        learned_opt.load(path)
    assert_one_line(e)
    # a header with a config key this version does not know
    rewrite_header(path, config={"hidden_sizes": [8, 4], "fancy": 1})
    with pytest.raises(CheckpointError, match="fancy") as e:
        learned_opt.load(path)
    assert_one_line(e)


def test_save_rejects_wrong_theta_and_bad_metadata(tmp_path):
    lopt = MLP(hidden_sizes=(4,))
    theta = lopt.init(KEY)
    thetas = jax.tree.map(lambda x: jnp.stack([x, x]), theta)   # a population, not one theta
    path = str(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match="theta to save does not match"):
        learned_opt.save(path, lopt, thetas)
    with pytest.raises(CheckpointError, match="JSON"):
        learned_opt.save(path, lopt, theta, {"bad": object()})
    assert os.listdir(tmp_path) == []
