"""Shipped optimizers: load by name, use in a plain optax loop, model cards that reproduce."""
import json
import shlex
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
import tasks
from learned_opt.base import CheckpointError
from meta_train.config import TrainConfig, get_config
from meta_train.ship import reproduce_command, wall_time_s

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURES = {"mlp", "lstm", "rnn_mlp", "adafactor_mlp"}


def test_every_architecture_is_shipped_with_a_model_card():
    names = learned_opt.shipped_names()
    assert ARCHITECTURES <= set(names), names
    for name in names:
        d = os.path.join(ROOT, "checkpoints", name)
        card = open(os.path.join(d, "MODEL_CARD.md")).read()
        for needle in ("architecture", "meta-training distribution", "outer steps", "wall time",
                       "hardware", "lopt train --config", f'learned_opt.load("{name}")'):
            assert needle in card, (name, needle)
        assert os.path.getsize(os.path.join(d, "optimizer.npz")) < 1_000_000   # meta-parameters only
        assert not os.path.exists(os.path.join(d, "train_state.npz"))


def test_shipped_optimizer_by_name_in_a_plain_optax_loop():
    """learned_opt.load("mlp").as_optax() trains a held-out mnist1d MLP: the loss falls."""
    tx = learned_opt.load("mlp").as_optax()
    task = tasks.get_task("mnist1d_mlp_relu")
    key = jax.random.PRNGKey(3)
    params = task.init(key)
    state = tx.init(params)

    @jax.jit
    def step(params, state, k):
        loss, grads = jax.value_and_grad(task.loss)(params, k, task.sample_batch(k))
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for k in jax.random.split(key, 60):
        params, state, loss = step(params, state, k)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:3])


def test_each_shipped_optimizer_restores_its_architecture():
    for name in ARCHITECTURES:
        lopt, theta, meta = learned_opt.load(name)
        assert lopt.architecture == name and meta["outer_steps"] > 0
        cfg = meta["train_config"]
        assert cfg["architecture"] == name and cfg["family"] == "mnist1d_mlp"


def test_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"no shipped optimizer named 'nope'.*mlp"):
        learned_opt.load("nope")
    monkeypatch.setenv("LOPT_CHECKPOINTS", str(tmp_path))            # an empty shelf
    with pytest.raises(CheckpointError, match="LOPT_CHECKPOINTS"):
        learned_opt.load("mlp")
    lopt = learned_opt.make("adafactor_mlp")
    os.makedirs(tmp_path / "mine")
    learned_opt.save(str(tmp_path / "mine" / "optimizer.npz"), lopt, lopt.init(jax.random.PRNGKey(0)))
    assert learned_opt.shipped_names() == ["mine"]
    loaded = learned_opt.load("mine")
    assert loaded.lopt.architecture == "adafactor_mlp"
    g = {"w": jnp.ones(3)}
    tx = loaded.guarded(optax.sgd(0.1))
    upd, _ = tx.update(g, tx.init(g), g, value=1.0, value_fn=lambda p: jnp.sum(p["w"] ** 2))
    assert np.all(np.isfinite(upd["w"]))


def test_general_optimizer_trains_a_kind_of_task_it_never_saw():
    """The shipped general optimizer (norm_mlp, meta-trained on classifiers and quadratics) trains a
    held-out autoencoder through optax with the run length given: the loss falls below Adam(1e-3)'s
    after the same 200 steps from the same initialisation and batches (measured: 0.018 vs 0.034)."""
    lopt, theta, meta = learned_opt.load("general")
    assert lopt.architecture == "norm_mlp" and len(meta["train_config"]["families"]) >= 2
    task = tasks.get_task("digits_autoencoder_relu")
    finals = {}
    for label, tx in (("general", lopt.as_optax(theta, num_steps=200)), ("adam", optax.adam(1e-3))):
        run = jax.jit(lambda k, tx=tx: tasks.training.train(task, tx, k, 200))(jax.random.PRNGKey(0))
        assert np.isfinite(np.asarray(run.losses)).all()
        finals[label] = float(run.final_loss)
    assert finals["general"] < finals["adam"], finals


def test_general_extrapolates_from_its_own_longest_episode():
    """The shipped general shrinks the steps of runs longer than any it was meta-trained on, from
    exactly that length: trained_horizon = the run's max_episode_length, and a run of that
    length or shorter takes the same steps as with the option off."""
    import dataclasses
    lopt, theta, meta = learned_opt.load("general")
    H = meta["train_config"]["max_episode_length"]
    assert lopt.config.trained_horizon == H == 400
    off = type(lopt)(dataclasses.replace(lopt.config, trained_horizon=0))
    params = {"w": jnp.full((4, 3), 0.5), "b": jnp.zeros(3)}
    grads = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones(3)}
    step = {}
    for n in (H, 4 * H):
        for label, lo in (("on", lopt), ("off", off)):
            new, _ = lo.opt_update(theta, lo.opt_init(theta, params, n), grads, params, 0.0,
                                   jax.random.PRNGKey(0))
            step[label, n] = np.asarray(new["w"] - params["w"])
    np.testing.assert_array_equal(step["on", H], step["off", H])
    # float32 rounding inside Newton-Schulz differs between the two compiled programs: an
    # absolute tolerance of ~1e-6 of the largest entry (seen: 3e-8 on an entry of 5e-4)
    np.testing.assert_allclose(step["on", 4 * H], 0.5 * step["off", 4 * H], rtol=1e-5, atol=1e-7)


def test_model_card_command_reproduces_the_config():
    """The reproduce command's --set overrides rebuild the shipped run's config exactly."""
    for name in sorted(ARCHITECTURES | {"general"}):
        cfg = json.load(open(os.path.join(ROOT, "checkpoints", name, "config.json")))
        card = open(os.path.join(ROOT, "checkpoints", name, "MODEL_CARD.md")).read()
        cmd = next(line for line in card.splitlines() if line.startswith("lopt train --config"))
        words = shlex.split(cmd)   # as a shell reads it
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        rebuilt = get_config(words[words.index("--config") + 1], sets)
        got = {k: v for k, v in json.loads(rebuilt.to_json()).items() if k != "description"}
        # the stored config, with the defaults of fields added since it was written
        stored = json.loads(TrainConfig.from_dict(cfg).to_json())
        assert got == {k: v for k, v in stored.items() if k != "description"}, name
        assert cmd == reproduce_command(cfg, words[3], words[5])


def test_cli_applies_a_shipped_optimizer_by_name(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "meta_train", "apply", "adafactor_mlp", "--task", "quadratic_10d",
                        "--steps", "20", "--out", str(tmp_path / "a")], capture_output=True, text=True,
                       timeout=240, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    assert "final training loss" in p.stdout and (tmp_path / "a" / "curves.png").exists()


def test_wall_time_sums_resumed_segments():
    recs = [{"time_s": 1.0}, {"eval_mean_loss": 0.5}, {"time_s": 10.0}, {"time_s": 2.0}, {"time_s": 5.0}]
    assert wall_time_s(recs) == 15.0


def test_model_card_benchmark_section_is_put_and_replaced(tmp_path):
    """update_card_bench writes the optimizer's leaderboard rows (unguarded, +guard,
    +traj-guard) before the meta-training plot, and a second call replaces them."""
    import json
    import shutil
    from meta_train.ship import BENCH_HEADING, update_card_bench
    root = tmp_path / "ck"
    shutil.copytree(os.path.join(ROOT, "checkpoints", "mlp"), root / "mlp")
    bench = tmp_path / "bench"
    bench.mkdir()

    def write(iqm):
        est = {"value": iqm, "low": iqm - 0.1, "high": iqm + 0.1}
        frac = {"value": 0.5, "low": 0.25, "high": 0.75}
        board = [{"optimizer": lab, "overall": {"iqm": est, "frac_faster": frac},
                  "worst_final_ratio": w} for lab, w in
                 (("mlp +traj-guard", 1.0), ("Adam tuned", 1.0), ("mlp", 3.5), ("lstm", 2.0))]
        (bench / "bench.json").write_text(json.dumps({"leaderboard": board}))

    write(1.25)
    path = update_card_bench("mlp", str(bench), str(root))
    text = open(path).read()
    assert text.count(BENCH_HEADING) == 1 and "| mlp +traj-guard | 1 | 1.25 [1.15, 1.35] | 50% [25, 75] | 1.000 |" in text
    assert "| mlp | 3 |" in text and "lstm" not in text.split(BENCH_HEADING)[1].split("![")[0]
    assert text.index(BENCH_HEADING) < text.index("![meta-training]")
    write(0.75)
    text = open(update_card_bench("mlp", str(bench), str(root))).read()
    assert text.count(BENCH_HEADING) == 1 and "0.75 [0.65, 0.85]" in text and "1.25" not in text
    assert text.count("![meta-training]") == 1
