"""The CLI end to end, and bad inputs: one line on stderr, non-zero exit, no traceback."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lopt(*args, env=None, timeout=240):
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    t = time.time()
    p = subprocess.run([sys.executable, "-m", "meta_train", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=e)
    return p.returncode, p.stdout, p.stderr, time.time() - t


def assert_user_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.startswith("lopt: error")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc, so, se, _ = lopt("train", "--config", "smoke", "--out", str(out), "--no-progress",
                         "--report-tasks", "2")
    assert rc == 0, se
    return out


def test_train_apply_report_end_to_end(smoke_run, tmp_path):
    for f in ("config.json", "metrics.jsonl", "train_state.npz", "optimizer.npz",
              "meta_training.png", "report/report.md", "report/suite_in_distribution.png",
              "report/suite_long_horizon.png", "report/suite_ood_dataset.png"):
        assert (smoke_run / f).exists(), f
    rc, so, se, _ = lopt("apply", str(smoke_run / "optimizer.npz"), "--task", "quadratic_10d",
                         "--steps", "30", "--out", str(tmp_path / "apply"))
    assert rc == 0, se
    assert (tmp_path / "apply" / "curves.png").exists()
    assert "final training loss" in so
    rc, so, se, _ = lopt("apply", str(smoke_run / "optimizer.npz"), "--task", "quadratic_10d",
                         "--steps", "30", "--guard", "--out", str(tmp_path / "apply_g"))
    assert rc == 0, se
    assert "fell back to Adam on" in so
    # two checkpoints side by side (the same file twice gets distinct labels)
    ck = str(smoke_run / "optimizer.npz")
    rc, so, se, _ = lopt("report", ck, ck, "--num-tasks", "2", "--steps", "20", "--long-factor", "2",
                         "--ood-tasks", "2", "--out", str(tmp_path / "rep"), "--no-progress",
                         "--seeds", "2", "--baselines", "lion")
    assert rc == 0, se
    text = (tmp_path / "rep" / "report.md").read_text()
    for needle in ("| task |", "Adam tuned", "mlp +guard", "Suite `in_distribution`",
                   "Suite `long_horizon`", "40 steps", "Suite `ood_dataset`", "guard rate", "mlp +traj-guard",
                   "speedup over tuned Adam", "lion tuned", "Cost per step", "speedup_in_distribution.png"):
        assert needle in text, needle
    import json
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {r["optimizer"]: r for r in rep["summary"]["in_distribution"]}
    assert rows["Adam tuned"]["median_ratio"] == 1.0 and rows["Adam tuned"]["fallback_rate"] is None
    assert len(rows) == 3 + 2 * 3 and 0.0 <= rows["mlp +guard"]["fallback_rate"] <= 1.0
    assert rows["mlp +guard"]["guard"] == "step" and rows["mlp +traj-guard"]["guard"] == "trajectory"
    # the guard's guarantee per task: never worse than tuned Adam by much on these quadratics
    assert rows["mlp +guard"]["worst_ratio"] < 1.5, rows["mlp +guard"]
    # the trajectory guard's: within 5% of its fallback (tuned Adam) at the end of every run
    assert rows["mlp +traj-guard"]["worst_ratio"] <= 1.05, rows["mlp +traj-guard"]
    assert 0.0 <= rows["mlp +traj-guard"]["fallback_rate"] <= 1.0
    assert {"Adam", "mlp", "mlp +guard", "mlp +traj-guard"} <= set(rep["step_cost_vs_adam"])


def test_help_lists_subcommands():
    rc, so, se, _ = lopt("--help")
    assert rc == 0
    for sub in ("train", "apply", "report", "bench", "soup", "tasks"):
        assert sub in so


def test_tasks_lists_families():
    rc, so, se, _ = lopt("tasks")
    assert rc == 0, se
    assert "mnist1d_mlp" in so and "quadratic" in so


def test_unknown_config_and_key(tmp_path):
    rc, _, se, _ = lopt("train", "--config", "nope", "--out", str(tmp_path / "a"))
    assert_user_error(rc, se, "nope")
    rc, _, se, _ = lopt("train", "--config", "smoke", "--set", "bogus_key=1", "--out", str(tmp_path / "b"))
    assert_user_error(rc, se, "bogus_key")
    rc, _, se, _ = lopt("train", "--config", "smoke", "--set", "sigma=-1", "--out", str(tmp_path / "c"))
    assert_user_error(rc, se, "sigma")
    rc, _, se, _ = lopt("train", "--config", "smoke", "--set", "estimator=es", "--out", str(tmp_path / "d"))
    assert_user_error(rc, se, "unknown estimator", "tbptt")


def test_train_with_another_estimator(tmp_path):
    """--estimator reaches the config and the run: truncated BPTT differentiates through
    the learned optimizer's steps and still lowers the held-out loss of the smoke run."""
    import json
    out = tmp_path / "tbptt"
    rc, so, se, _ = lopt("train", "--config", "smoke", "--estimator", "tbptt", "--out", str(out),
                         "--no-progress", "--no-report")
    assert rc == 0, se
    assert json.loads((out / "config.json").read_text())["estimator"] == "tbptt"
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "eval_mean_loss" in l]
    # Measured 0.50025 -> 0.50001 -> 0.49959 (6 outer steps; deterministic for the seed; before the
    # periodic evaluation used the shared rollout of tasks.training: 0.54186 -> 0.54153 -> 0.54110).
    losses = [e["eval_mean_loss"] for e in evals]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]


def test_unknown_task(smoke_run):
    rc, _, se, _ = lopt("apply", str(smoke_run / "optimizer.npz"), "--task", "no_such_task")
    assert_user_error(rc, se, "no_such_task")


def test_corrupt_and_foreign_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip file at all")
    rc, _, se, _ = lopt("apply", str(corrupt), "--task", "quadratic_10d")
    assert_user_error(rc, se)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    rc, _, se, _ = lopt("report", str(foreign))
    assert_user_error(rc, se)
    rc, _, se, _ = lopt("report", str(corrupt), "--baselines", "adamw,adamax")
    assert_user_error(rc, se, "unknown baseline", "adamax", "lion")
    rc, _, se, _ = lopt("apply", str(tmp_path / "missing.npz"), "--task", "quadratic_10d")
    assert_user_error(rc, se)
    # lopt bench: a foreign file, an unknown shipped name or suite, too few seeds: one line each,
    # before any work
    rc, _, se, _ = lopt("bench", str(foreign), "--out", str(tmp_path / "bench"))
    assert_user_error(rc, se)
    rc, _, se, _ = lopt("bench", "no_such_opt", "--suite", "nqm", "--out", str(tmp_path / "bench"))
    assert_user_error(rc, se, "no_such_opt")
    rc, _, se, _ = lopt("bench", "mlp", "--suite", "nope", "--out", str(tmp_path / "bench"))
    assert_user_error(rc, se, "unknown suite 'nope'")
    rc, _, se, _ = lopt("bench", "mlp", "--seeds", "1", "--out", str(tmp_path / "bench"))
    assert_user_error(rc, se, "at least 2 seeds")


@pytest.mark.parametrize("argv, want", [((), ("step", "trajectory")),
                                        (("--guards", "trajectory"), ("trajectory",)),
                                        (("--guards", "step"), ("step",)),
                                        (("--guards", "step", "--no-guard"), False)])
def test_bench_passes_the_chosen_guards(monkeypatch, capsys, argv, want):
    import meta_train.evaluation.bench as bench
    from meta_train.cli import main
    seen = {}

    def fake_run_bench(*args, **kwargs):
        seen.update(kwargs)
        return {"path": "x", "wall_s": 0.0, "leaderboard": []}
    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "summary_lines", lambda r: [])
    assert main(["bench", "mlp", "--no-progress", *argv]) == 0
    assert seen["guard"] == want
    with pytest.raises(SystemExit):
        main(["bench", "--guards", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_missing_tfds_dataset_fails_fast(tmp_path):
    rc, _, se, dt = lopt("train", "--config", "smoke", "--out", str(tmp_path / "m"),
                         "--set", "family=mlp", "--set", 'family_kwargs={"dataset": "mnist"}',
                         env={"LOPT_DATA_DIR": str(tmp_path / "data")})
    assert_user_error(rc, se, "mnist")
    assert dt < 30  # interpreter + jax import included; the dataset check itself takes < 5 s


def test_one_error_base_class_and_one_estimator_registry(capsys):
    """Every error a user can cause derives from learned_opt.errors.LearnedOptError, the one class
    the CLI turns into a line; the estimator names of config validation, make_estimator and
    `--estimator` are the keys of meta_train.estimators.ESTIMATORS."""
    import learned_opt
    import tasks
    from learned_opt.errors import LearnedOptError
    from meta_train.cli import build_parser, main
    from meta_train.config import ConfigError, TrainConfig
    from meta_train.distributed import DistributedError
    from meta_train.estimators import ESTIMATORS, EstimatorError, make_estimator
    from meta_train.state_io import StateFileError
    for cls in (ConfigError, EstimatorError, StateFileError, DistributedError, tasks.TaskError,
                tasks.DatasetNotFoundError, learned_opt.CheckpointError):
        assert issubclass(cls, LearnedOptError), cls
    assert main(["train", "--config", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lopt: error: unknown config 'nope'")

    (action,) = [a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if "--estimator" in a.option_strings]
    assert list(action.choices) == list(ESTIMATORS) == ["pes", "nres", "tes", "full_es", "tbptt"]
    for name in ESTIMATORS:
        assert TrainConfig(estimator=name).estimator == name
    with pytest.raises(ConfigError, match="unknown estimator 'es'"):
        TrainConfig(estimator="es")
    bad = object.__new__(TrainConfig)
    object.__setattr__(bad, "estimator", "es")
    with pytest.raises(EstimatorError, match="known: \\['pes', 'nres', 'tes', 'full_es', 'tbptt'\\]"):
        make_estimator(bad, None)
