"""Meta-training on the quadratic family lowers the held-out meta-loss."""
import jax
import numpy as np

from meta_train.config import get_config
from meta_train.trainer import MetaTrainer
from meta_training_helper import quadratic_meta_training


def test_meta_training_lowers_quadratic_meta_loss():
    before, after, state = quadratic_meta_training("mlp", 300)
    # Measured here: 0.775 -> 0.604 (seed 0; 1.017 -> 0.837 with the periodic evaluation before
    # issue 12's shared rollout); we require a drop of at least 0.1.
    assert after < before - 0.1, (before, after)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.theta))



def test_meta_training_through_the_loss_guard_runs():
    """guard_lr > 0: inner steps go through LGL2O with an Adam fallback; PES still estimates."""
    # A weak fallback (Adam 1e-5) so the learned optimizer wins some steps: if the fallback won
    # every step the trajectory would not depend on theta and the PES gradient would be 0.
    cfg = get_config("smoke").replace(guard_lr=1e-5, lopt_config={"output_init_scale": 1.0},
                                      outer_steps=3)
    tr = MetaTrainer(cfg)
    state = tr.init()
    assert tr.guard is not None
    assert type(state.est_state.inner.opt_state).__name__ == "LossGuardState"
    norms = []
    for _ in range(cfg.outer_steps):
        state, metrics = tr.outer_step(state)
        norms.append(float(metrics["grad_norm"]))
        assert np.isfinite(float(metrics["meta_loss"]))
    assert all(np.isfinite(norms)), norms
    gs = state.est_state.inner.opt_state
    # every particle's guard counted exactly the steps of its current episode
    np.testing.assert_array_equal(np.asarray(gs.steps), np.concatenate([state.est_state.t] * 2))
    assert np.all(np.asarray(gs.fallbacks) <= np.asarray(gs.steps))
    assert np.isfinite(float(tr.evaluate(state.theta)["eval_mean_loss"]))


def test_meta_training_through_the_trajectory_guard_runs():
    """guard_kind="trajectory": the inner state carries the fallback's own run (its parameters
    move with Adam's rule on its own gradient), the run is switched onto it at checks, and PES
    still estimates a finite, non-zero meta-gradient."""
    cfg = get_config("smoke").replace(guard_lr=1e-5, guard_kind="trajectory", guard_check_every=5,
                                      lopt_config={"output_init_scale": 1.0}, outer_steps=2)
    tr = MetaTrainer(cfg)
    state = tr.init()
    assert type(state.est_state.inner.opt_state).__name__ == "TrajectoryGuardState"
    y0 = jax.tree.map(np.asarray, state.est_state.inner.opt_state.fallback_params)
    for _ in range(cfg.outer_steps):
        state, metrics = tr.outer_step(state)
        assert np.isfinite(float(metrics["meta_loss"])) and float(metrics["grad_norm"]) > 0
    gs = state.est_state.inner.opt_state
    np.testing.assert_array_equal(np.asarray(gs.steps), np.concatenate([state.est_state.t] * 2))
    # checks every 5 steps of each particle's episode (no final check: episodes have no end here)
    np.testing.assert_array_equal(np.asarray(gs.checks), np.asarray(gs.steps) // 5)
    assert np.all(np.asarray(gs.switches) <= np.asarray(gs.checks))
    y1 = jax.tree.map(np.asarray, gs.fallback_params)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(y0), jax.tree.leaves(y1)))
    assert np.isfinite(float(tr.evaluate(state.theta)["eval_mean_loss"]))


def test_log_meta_loss_is_the_log_of_the_normalised_loss():
    import learned_opt
    import tasks
    from meta_train.unroll import learned_optimizer_unroll
    lopt = learned_opt.make("mlp")
    theta = lopt.init(jax.random.PRNGKey(0))
    family = tasks.get_family("quadratic")
    plain, logged = (learned_optimizer_unroll(lopt, family, episode_length=5, log_loss=b) for b in (False, True))
    k0, k1 = jax.random.split(jax.random.PRNGKey(1))
    _, lin = plain.step(theta, plain.start(theta, k0, 5), k1)
    _, log = logged.step(theta, logged.start(theta, k0, 5), k1)
    np.testing.assert_allclose(log, np.log(lin), rtol=1e-6)


def test_meta_loss_and_meta_lr_final_are_validated():
    import pytest
    from meta_train.config import ConfigError
    with pytest.raises(ConfigError, match="meta_loss"):
        get_config("smoke", ["meta_loss=mean"])
    with pytest.raises(ConfigError, match="meta_lr_final"):
        get_config("smoke", ["meta_lr_final=1.0"])
    assert get_config("smoke", ["meta_lr_final=0.0001"]).meta_lr_final == 1e-4


def test_outer_step_and_evaluation_compile_once():
    """The first outer step's compilation serves every later one, a state restored from a host copy
    (as --resume does) included, and repeated evaluations share one compiled function."""
    tr = MetaTrainer(get_config("smoke"))
    state = tr.init()
    for _ in range(3):
        state, _ = tr.outer_step(state)
    tr.evaluate(state.theta)
    tr.evaluate(state.theta)
    state = tr.place(jax.device_get(tr.gather(state)))    # a resumed run's state
    state, _ = tr.outer_step(state)
    tr.evaluate(state.theta)
    assert tr.outer_step._cache_size() == 1
    assert tr.evaluate._cache_size() == 1


def test_init_from_starts_meta_training_at_the_files_theta(tmp_path):
    """Fine-tuning: ``init_from`` (a file or shipped name) replaces the fresh init, the run
    continues from there, a file whose meta-parameters have other shapes is one clear error, and
    options that change no shape may differ."""
    import pytest
    import learned_opt
    cfg = get_config("smoke")
    lopt = learned_opt.make(cfg.architecture, cfg.lopt_config)
    theta = jax.tree.map(lambda x: x + 0.5, lopt.init(jax.random.PRNGKey(7)))   # not a fresh init
    path = str(tmp_path / "start.npz")
    learned_opt.save(path, lopt, theta)
    tr = MetaTrainer(cfg.replace(init_from=path))
    state = tr.init()
    for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fresh = MetaTrainer(cfg).init().theta
    assert any(np.any(np.asarray(a) != np.asarray(b))
               for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(fresh)))
    state, metrics = tr.outer_step(state)
    assert np.isfinite(float(metrics["meta_loss"]))
    other = str(tmp_path / "other.npz")
    small = learned_opt.make(cfg.architecture, {"hidden_sizes": [4]})
    learned_opt.save(other, small, small.init(jax.random.PRNGKey(0)))
    with pytest.raises(learned_opt.CheckpointError, match=r"init_from=.*does not match") as e:
        MetaTrainer(cfg.replace(init_from=other))
    assert "\n" not in str(e.value)
    # an option that adds no meta-parameter may differ: the rule is fine-tuned under it
    relaxed = MetaTrainer(cfg.replace(init_from=path, lopt_config={"step_mult": 0.5})).init().theta
    for a, b in zip(jax.tree.leaves(relaxed), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(learned_opt.CheckpointError, match="init_from=.*no checkpoint"):
        MetaTrainer(cfg.replace(init_from=str(tmp_path / "missing.npz")))


def test_a_file_saved_before_an_option_existed_loads_with_its_default(tmp_path, monkeypatch):
    """load_theta compares configs as the architecture reads them: a key missing from an older
    file's header takes its default (the shipped ``general`` predates ``adam_scale``), while a
    key that differs is still refused."""
    import pytest
    import learned_opt
    from learned_opt import checkpoint
    lopt = learned_opt.make("norm_mlp")
    theta = lopt.init(jax.random.PRNGKey(0))
    path = str(tmp_path / "old.npz")
    to_dict = checkpoint.config_to_dict
    monkeypatch.setattr(checkpoint, "config_to_dict",
                        lambda c: {k: v for k, v in to_dict(c).items() if k != "adam_scale"})
    learned_opt.save(path, lopt, theta)
    monkeypatch.undo()
    assert "adam_scale" not in learned_opt.read_header(path)["config"]
    for a, b in zip(jax.tree.leaves(learned_opt.load_theta(path, lopt)), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(learned_opt.CheckpointError, match="adam_scale"):
        learned_opt.load_theta(path, learned_opt.make("norm_mlp", {"adam_scale": True}))
