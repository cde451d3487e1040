"""A run killed after step k and resumed reaches the same theta as an uninterrupted run."""
import json
import os

import jax
import numpy as np

from meta_train.config import get_config
from learned_opt.files import read_jsonl as read_metrics
from meta_train.run import STATE_FILE, train

import pytest

CFG = get_config("smoke").replace(outer_steps=12, checkpoint_every=5, eval_every=4, log_every=1)
# two families (own populations, one augmented), the normalised architecture, hidden horizons
MULTI = CFG.replace(architecture="norm_mlp", hide_length=0.5, families=[
    {"family": "quadratic"},
    {"family": "quadratic", "kwargs": {"dim": 5}, "weight": 0.5, "num_pairs": 1,
     "augment": {"reparam": [0.1, 10.0], "loss_scale": [0.1, 10.0]}}])


@pytest.mark.parametrize("cfg", [CFG, MULTI], ids=["one_family", "two_families"])
def test_resume_matches_uninterrupted(tmp_path, cfg):
    CFG = cfg
    full, _, _ = train(CFG, str(tmp_path / "full"), progress=False)

    run = str(tmp_path / "killed")
    train(CFG, run, progress=False, stop_after=8)       # "killed" after step 8; last checkpoint at 5
    assert os.path.exists(os.path.join(run, STATE_FILE))
    resumed, _, _ = train(CFG, run, resume=True, progress=False)

    assert int(resumed.step) == int(full.step) == 12
    # Same compiled step, same RNG stream restored from the checkpoint: the tolerance is
    # float32 round-off (1e-6 relative); on one machine the results are bitwise equal.
    for a, b in zip(jax.tree.leaves(resumed.theta), jax.tree.leaves(full.theta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # Theta actually moved, so equality is not trivial.
    start = train(CFG.replace(outer_steps=0, eval_every=0), str(tmp_path / "zero"), progress=False,)[0]
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(full.theta), jax.tree.leaves(start.theta)))
    assert moved > 1e-5
    # The metrics log has each logged step once, in order, like the uninterrupted run's.
    steps = [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "meta_loss" in r]
    assert steps == list(range(1, 13))
    ref = [r for r in read_metrics(str(tmp_path / "full" / "metrics.jsonl")) if "meta_loss" in r]
    got = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "meta_loss" in r]
    np.testing.assert_allclose([r["meta_loss"] for r in got], [r["meta_loss"] for r in ref], rtol=1e-6)
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["outer_steps"] == 12


def test_existing_run_needs_resume_flag(tmp_path):
    from meta_train.config import ConfigError
    import pytest
    train(CFG.replace(outer_steps=2, eval_every=0), str(tmp_path / "r"), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(CFG.replace(outer_steps=2, eval_every=0), str(tmp_path / "r"), progress=False)
    with pytest.raises(ConfigError, match="another config"):
        train(CFG.replace(outer_steps=4, sigma=0.5, eval_every=0), str(tmp_path / "r"),
              resume=True, progress=False)
    # a reworded description is not another config: the run resumes
    train(CFG.replace(outer_steps=3, eval_every=0, description="reworded"), str(tmp_path / "r"),
          resume=True, progress=False)
    with open(tmp_path / "r" / "config.json") as f:
        assert json.load(f)["outer_steps"] == 3


def test_training_state_file_is_checked(tmp_path):
    """train_state.npz is an archive of the shared format: a truncated or altered file fails its
    checksum, a state of another config is named leaf by leaf, a theta file is foreign; each is a
    StateFileError (a LearnedOptError, so the CLI prints one line)."""
    import pytest
    import learned_opt
    from learned_opt.errors import LearnedOptError
    from meta_train.state_io import StateFileError, load_state
    cfg = CFG.replace(outer_steps=2, eval_every=0)
    state, _, _ = train(cfg, str(tmp_path / "r"), progress=False)
    path = tmp_path / "r" / STATE_FILE
    again = load_state(str(path), state)                # round trip, exactly
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert issubclass(StateFileError, LearnedOptError)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateFileError, match="corrupt or truncated"):
        load_state(str(tmp_path / "trunc.npz"), state)
    # same structure, one number changed: the checksum catches it
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k in arrays if k.startswith("state/theta/"))
    arrays[name] = arrays[name] + 1.0
    np.savez(tmp_path / "altered.npz", **arrays)
    with pytest.raises(StateFileError, match="checksum"):
        load_state(str(tmp_path / "altered.npz"), state)
    # another config's state: mismatched leaves are named
    other, _, _ = train(cfg.replace(num_pairs=3), str(tmp_path / "o"), progress=False)
    with pytest.raises(StateFileError, match="does not match this run's config"):
        load_state(str(tmp_path / "o" / STATE_FILE), state)
    # an optimizer file is not a training state
    learned_opt.save(str(tmp_path / "theta.npz"), learned_opt.make("mlp"), state.theta)
    with pytest.raises(StateFileError, match="format 'learned-opt-theta'"):
        load_state(str(tmp_path / "theta.npz"), state)


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    """The run keeps its last two checkpoints. With the newest truncated (or altered), resume
    warns in one line and continues from the previous one to the same final theta as an
    uninterrupted run; afterwards both kept checkpoints are good again. With both bad, resume
    is one clear StateFileError."""
    from meta_train.run import PREV_STATE_FILE, load_checkpoint
    from meta_train.state_io import StateFileError, load_state
    full, _, _ = train(CFG, str(tmp_path / "full"), progress=False)
    run = tmp_path / "killed"
    killed, _, _ = train(CFG, str(run), progress=False, stop_after=11)   # checkpoints at 5 and 10
    newest, prev = run / STATE_FILE, run / PREV_STATE_FILE
    assert int(load_state(str(newest), killed).step) == 10
    assert int(load_state(str(prev), killed).step) == 5
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])                          # torn / truncated
    capsys.readouterr()
    resumed, records, _ = train(CFG, str(run), resume=True, progress=False)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "previous checkpoint" in warnings[0] and "step 5" in warnings[0]
    for a, b in zip(jax.tree.leaves(resumed.theta), jax.tree.leaves(full.theta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl")) if "meta_loss" in r] == \
        list(range(1, 13))
    # the bad file was overwritten, not rotated: both kept checkpoints load (steps 10 and 12)
    assert int(load_state(str(newest), resumed).step) == 12
    assert int(load_state(str(prev), resumed).step) == 10
    # both bad: one error naming both problems
    for f in (newest, prev):
        f.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(StateFileError, match="no usable checkpoint"):
        load_checkpoint(str(run), resumed)
    # only the previous exists (killed between the rotation and the write): it is used
    d = tmp_path / "between"
    train(CFG, str(d), progress=False, stop_after=11)
    os.replace(d / STATE_FILE, d / PREV_STATE_FILE)
    state, fell_back = load_checkpoint(str(d), resumed, warn=lambda m: None)
    assert fell_back and int(state.step) == 10
