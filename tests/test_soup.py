"""Soups of optimizer files (learned_opt/soup.py, `lopt soup`): the weighted mean of the members'
meta-parameters, leaf by leaf, against a numpy oracle; mismatched members are one-line errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_opt import CheckpointError, checkpoint, soup
from learned_opt.mlp import MLP
from learned_opt.norm_mlp import NormMLP
from meta_train.cli import main


def _save_members(tmp_path, lopt, n, label="m"):
    paths = []
    for i in range(n):
        theta = lopt.init(jax.random.PRNGKey(i))
        p = str(tmp_path / f"{label}{i}.npz")
        checkpoint.save(p, lopt, theta, {"label": f"{label} seed {i}"})
        paths.append(p)
    return paths


def _flat(theta):
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(theta)]


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 5.0]])
def test_soup_is_the_weighted_mean_of_the_members_leaf_by_leaf(tmp_path, weights):
    lopt = NormMLP(NormMLP.Config(hidden_sizes=(8, 8)))
    paths = _save_members(tmp_path, lopt, 3)
    out = str(tmp_path / "soup.npz")
    soup.save(out, paths, weights, {"note": "test"})
    got = checkpoint.load(out)
    w = np.ones(3) / 3 if weights is None else np.asarray(weights) / np.sum(weights)
    members = [_flat(checkpoint.load(p).theta) for p in paths]
    for j, leaf in enumerate(_flat(got.theta)):
        oracle = sum(w[i] * members[i][j] for i in range(3))
        np.testing.assert_allclose(leaf, oracle, rtol=1e-6, atol=1e-7)
    assert got.lopt.architecture == "norm_mlp" and got.lopt.config == lopt.config
    assert [m["weight"] for m in got.metadata["soup"]] == pytest.approx(w.tolist())
    assert [m["label"] for m in got.metadata["soup"]] == ["m seed 0", "m seed 1", "m seed 2"]
    assert got.metadata["note"] == "test" and len(got.metadata["soup"][0]["sha256"]) == 64


def test_a_soup_of_copies_is_the_member_and_steps_like_it(tmp_path):
    lopt = NormMLP(NormMLP.Config(hidden_sizes=(8, 8)))
    (p,) = _save_members(tmp_path, lopt, 1)
    s = soup.average([p, p, p], [0.2, 0.3, 0.5])
    for a, b in zip(_flat(s.theta), _flat(checkpoint.load(p).theta)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert soup.spread([p, p]) == 0.0
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    grads = {"w": jnp.cos(params["w"])}
    steps = []
    for loaded in (checkpoint.load(p), s):
        tx = loaded.as_optax(num_steps=10)
        upd, _ = tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))
        steps.append(np.asarray(upd["w"]))
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-5, atol=1e-8)


def test_spread_is_the_rms_distance_from_the_mean_over_its_norm(tmp_path):
    lopt = MLP(MLP.Config())
    paths = _save_members(tmp_path, lopt, 2)
    a, b = (np.concatenate([np.ravel(x) for x in _flat(checkpoint.load(p).theta)]) for p in paths)
    centre = (a + b) / 2
    oracle = np.sqrt(np.mean([np.sum((a - centre) ** 2), np.sum((b - centre) ** 2)])) / np.linalg.norm(centre)
    assert soup.spread(paths) == pytest.approx(oracle, rel=1e-9)


def test_members_that_cannot_be_averaged_are_one_line_errors(tmp_path):
    a = _save_members(tmp_path, NormMLP(NormMLP.Config(hidden_sizes=(8, 8))), 2, "a")
    b = _save_members(tmp_path, NormMLP(NormMLP.Config(hidden_sizes=(8, 8), cosine_floor=0.25)), 1, "b")
    c = _save_members(tmp_path, MLP(MLP.Config()), 1, "c")
    cases = [([a[0]], None, "at least two"), (a + c, None, "architecture"), (a + b, None, "cosine_floor"),
             (a, [1.0], "one weight per file"), (a, [1.0, -1.0], "non-negative"), (a, [0.0, 0.0], "not all zero")]
    for paths, weights, needle in cases:
        with pytest.raises(CheckpointError, match=needle) as e:
            soup.average(paths, weights)
        assert "\n" not in str(e.value)


def test_lopt_soup_writes_the_file_and_refuses_bad_input_with_status_2(tmp_path, capsys):
    paths = _save_members(tmp_path, NormMLP(NormMLP.Config(hidden_sizes=(8, 8))), 2)
    out = str(tmp_path / "s.npz")
    assert main(["soup", *paths, "--out", out, "--note", "two seeds"]) == 0
    assert "spread around the mean" in capsys.readouterr().out
    assert checkpoint.load(out).metadata["note"] == "two seeds"
    before = os.path.getmtime(out)
    assert main(["soup", paths[0], out, "--out", out]) == 2          # would overwrite a member
    assert main(["soup", *paths, "--out", str(tmp_path / "t.npz"), "--weights", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("lopt: error: soup:") for line in err)
    assert os.path.getmtime(out) == before and not os.path.exists(tmp_path / "t.npz")


def test_set_changes_settings_that_add_no_meta_parameter_and_refuses_the_others(tmp_path):
    lopt = NormMLP(NormMLP.Config(hidden_sizes=(8, 8)))
    paths = _save_members(tmp_path, lopt, 2)
    out = str(tmp_path / "s.npz")
    soup.save(out, paths, config_overrides={"hypergrad": 0.1, "cosine_floor": 0.2})
    got = checkpoint.load(out)
    assert (got.lopt.config.hypergrad, got.lopt.config.cosine_floor) == (0.1, 0.2)
    assert got.metadata["config_overrides"] == {"hypergrad": 0.1, "cosine_floor": 0.2}
    for a, b in zip(_flat(got.theta), _flat(soup.average(paths).theta)):
        np.testing.assert_array_equal(a, b)
    one = soup.save(str(tmp_path / "one.npz"), paths[:1], config_overrides={"hypergrad": 0.3})
    assert one.lopt.config.hypergrad == 0.3 and one.metadata["label"] == "m seed 0"
    for bad, needle in (({"hidden_sizes": [4]}, "shapes"), ({"nope": 1}, "unknown"), ({"hypergrad": -1.0}, ">= 0")):
        with pytest.raises(CheckpointError, match=needle):
            soup.save(str(tmp_path / "bad.npz"), paths, config_overrides=bad)
    assert not os.path.exists(tmp_path / "bad.npz")
