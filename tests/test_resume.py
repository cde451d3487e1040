"""A run killed after step k and resumed reaches the same theta as an uninterrupted run."""
import json
import os

import jax
import numpy as np

from meta_train.config import get_config
from meta_train.run import STATE_FILE, read_metrics, train

CFG = get_config("smoke").replace(outer_steps=12, checkpoint_every=5, eval_every=4, log_every=1)


def test_resume_matches_uninterrupted(tmp_path):
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
