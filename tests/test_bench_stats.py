"""Benchmark statistics (meta_train.evaluation.stats, on rliable) against hand-computed cases
and a numpy stratified bootstrap; the leaderboard and guard tables (meta_train.evaluation.bench)
on synthetic suite records."""
import numpy as np
import pytest

from meta_train.evaluation import bench, stats
from oracles import np_iqm, np_stratified_bootstrap


def test_iqm_fraction_faster_and_profile_by_hand():
    s = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])       # (seeds, tasks)
    assert stats.iqm(s) == pytest.approx(4.5)        # 8 values, drop 2 each end: mean(3,4,5,6)
    assert stats.iqm(s) == pytest.approx(np_iqm(s))
    odd = np.array([[0.0, 10.0, 1.0], [2.0, 3.0, 100.0], [4.0, 5.0, 6.0]])
    assert stats.iqm(odd) == pytest.approx(np.mean([2, 3, 4, 5, 6]))   # 9 values, drop 2 each end
    # seed means per task [0.75, 1.25, 0.9] -> one task of three faster than tuned Adam
    f = np.array([[0.5, 2.0, 0.9], [1.0, 0.5, 0.9]])
    assert stats.frac_faster(f) == pytest.approx(1 / 3)
    np.testing.assert_allclose(stats.score_profile(f, [0.4, 0.9, 1.0, 2.0]), [1.0, 2 / 6, 1 / 6, 0.0])


def test_stratified_bootstrap_hand_cases():
    # one task, runs {0, 1}: replicate means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so
    # the 95% percentile interval is [0, 1] around the point 0.5
    e = stats.interval_estimates({"a": np.array([[0.0], [1.0]])}, reps=4000)["a"]["iqm"]
    assert (e.value, e.low, e.high) == (0.5, 0.0, 1.0)
    # runs that agree within every task: resampling runs cannot move anything (the tasks are the
    # strata, never resampled), so the interval is the point; an i.i.d. bootstrap over all
    # entries would not be
    flat = np.tile(np.array([[1.0, 2.0, 3.0, 4.0]]), (3, 1))
    e = stats.interval_estimates({"f": flat}, reps=500)["f"]
    assert e["iqm"].value == e["iqm"].low == e["iqm"].high == pytest.approx(2.5)
    assert e["frac_faster"].value == e["frac_faster"].low == e["frac_faster"].high == 0.75
    # fraction faster: task A runs {0.5, 2} (seed mean faster w.p. 3/4 under resampling), task B
    # runs {0.5, 0.5} (never): the fraction is 0 or 1/2, point 1/2
    e = stats.interval_estimates({"g": np.array([[0.5, 0.5], [2.0, 0.5]])}, reps=4000)["g"]
    assert (e["frac_faster"].value, e["frac_faster"].low, e["frac_faster"].high) == (0.5, 0.0, 0.5)


def test_intervals_match_a_numpy_stratified_bootstrap():
    rng = np.random.default_rng(3)
    s = rng.lognormal(0.0, 0.6, size=(4, 7)) * np.linspace(0.5, 2.0, 7)
    e = stats.interval_estimates({"x": s}, reps=4000, seed=1)["x"]
    lo, hi = np_stratified_bootstrap(s, np_iqm, 4000, seed=2)
    assert e["iqm"].value == pytest.approx(np_iqm(s))
    assert e["iqm"].low == pytest.approx(lo, abs=0.03) and e["iqm"].high == pytest.approx(hi, abs=0.03)
    assert e["iqm"].low < e["iqm"].value < e["iqm"].high
    # the same scores and seed give the same intervals
    again = stats.interval_estimates({"x": s}, reps=4000, seed=1)["x"]
    assert again == e
    prof = stats.performance_profiles({"x": s}, taus=[0.5, 1.0, 2.0], reps=2000)["x"]
    np.testing.assert_allclose(prof[0], stats.score_profile(s, [0.5, 1.0, 2.0]))
    plo, phi = np_stratified_bootstrap(s, lambda m: stats.score_profile(m, [0.5, 1.0, 2.0]), 2000)
    np.testing.assert_allclose(prof[1][0], plo, atol=0.06)
    np.testing.assert_allclose(prof[1][1], phi, atol=0.06)


def test_bad_scores_are_clear_errors():
    with pytest.raises(ValueError, match="non-finite"):
        stats.interval_estimates({"a": np.array([[1.0, np.inf], [1.0, 2.0]])})
    with pytest.raises(ValueError, match=r"\(runs, tasks\) matrix"):
        stats.interval_estimates({"a": np.ones(3)})


def _record(name, opts):
    """A synthetic suite record: {label: (scores (seeds, tasks), final ratios per task, guard)}."""
    return {"suite": name, "num_tasks": 3, "num_seeds": 2, "optimizers": {
        lab: {"scores": np.asarray(sc).tolist(), "final_ratio": list(fr), "worst_run_ratio": max(fr) * 1.01,
              "guard": g, "guard_rate": None if g is None else 0.25, "median_speedup": 1.0}
        for lab, (sc, fr, g) in opts.items()}}


def test_leaderboard_ranks_by_overall_iqm_and_guard_table():
    good = np.array([[2.0, 2.0, 3.0], [2.0, 2.5, 3.0]])
    bad = np.array([[0.2, 0.3, 0.0], [0.2, 0.4, 0.1]])
    ref = np.full((2, 3), 0.95)
    recs = [_record("s1", {"Adam tuned": (ref, [1, 1, 1], None), "opt": (bad, [3.0, 1.2, 9.0], None),
                           "opt +guard": (bad, [1.5, 1.0, 1.0], "step"),
                           "opt +traj-guard": (good, [1.0, 1.02, 0.5], "trajectory")}),
            _record("s2", {"Adam tuned": (ref, [1, 1, 1], None), "opt": (good, [0.5, 0.5, 0.5], None),
                           "opt +guard": (good, [0.6, 0.6, 0.6], "step"),
                           "opt +traj-guard": (good, [0.5, 0.5, 0.5], "trajectory")})]
    board = bench.leaderboard(recs, reps=200)
    assert [r["optimizer"] for r in board][0] == "opt +traj-guard"
    # "opt": bad on s1, good on s2 -> its IQM over both is the middle of the twelve scores
    assert [r["optimizer"] for r in board][-1] == "Adam tuned"
    by = {r["optimizer"]: r for r in board}
    both = np.concatenate([bad, good], axis=1)
    assert by["opt"]["overall"]["iqm"].value == pytest.approx(np_iqm(both))
    assert by["opt"]["suites"]["s1"]["iqm"].value == pytest.approx(np_iqm(bad))
    assert by["opt"]["worst_final_ratio"] == 9.0 and by["Adam tuned"]["overall"]["frac_faster"].value == 0
    # an optimizer that ran on one suite only is ranked on that suite's tasks
    recs[1]["optimizers"]["base tuned"] = dict(recs[1]["optimizers"]["opt"], guard=None)
    by = {r["optimizer"]: r for r in bench.leaderboard(recs, reps=200)}
    assert by["base tuned"]["num_suites"] == 1 and list(by["base tuned"]["suites"]) == ["s2"]
    assert by["base tuned"]["overall"]["iqm"].value == pytest.approx(np_iqm(good))
    assert by["opt"]["num_suites"] == 2
    rows = bench.guard_table(recs, ["opt"])
    s1 = next(r for r in rows if r["suite"] == "s1")
    assert s1["none"]["worst_task"] == 9.0 and s1["step"]["worst_task"] == 1.5
    assert s1["step"]["over"] == 1 and s1["trajectory"]["over"] == 0 and s1["trajectory"]["rate"] == 0.25


def test_suite_by_suite_table_uses_the_suites_own_statistic():
    """The leaderboard's suite-by-suite median is the suite section's (seed-mean curves), not the
    median of the seeds' own scores, which can disagree when seeds disagree (a 0.5 and a 4.0)."""
    scores = np.array([[0.5, 1.9, 0.5], [4.0, 2.0, 2.2]])      # seed means 2.25, 1.95, 1.35
    rec = _record("s1", {"Adam tuned": (np.full((2, 3), 0.9), [1, 1, 1], None),
                         "opt": (scores, [1.0, 0.9, 1.1], None),
                         "opt +traj-guard": (scores, [1.0, 0.9, 1.0], "trajectory")})
    for lab in ("opt", "opt +traj-guard"):
        rec["optimizers"][lab].update(median_speedup=0.6, task_speedups=[0.6, 1.9, 0.55])
    board = bench.leaderboard([rec], reps=100)
    text = "\n".join(bench.learned_table([rec], board))
    assert "| opt | `s1` | 0.60 | 1/3 | " in text and "1.95" not in text and "†" not in text
    # a record from before the per-task values: its median is still the suite's, tasks marked
    for lab in ("opt", "opt +traj-guard"):
        del rec["optimizers"][lab]["task_speedups"]
    text = "\n".join(bench.learned_table([rec], board))
    assert "| opt | `s1` | 0.60 | 3/3† | " in text and "† a suite recorded before" in text


def test_bench_end_to_end_and_resume(tmp_path):
    """`run_bench` on one shipped optimizer and one suite (its first task, 2 seeds): the files,
    the trajectory guard's promise on it, and a rerun that reuses the saved suite."""
    import json
    out = str(tmp_path / "b")
    msgs = []
    r = bench.run_bench(["mlp"], ["quadratic_30d"], out_dir=out, max_tasks=1, reps=200,
                        progress=msgs.append, baselines=("momentum",))
    text = open(r["path"]).read()
    for needle in ("## Leaderboard", "mlp +traj-guard", "mlp +guard", "Adam tuned", "momentum tuned",
                   "profiles.png", "## The guards", "## Cost per step", "Suite `quadratic_30d`"):
        assert needle in text, needle
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    labels = [row["optimizer"] for row in data["leaderboard"]]
    assert {"mlp", "mlp +guard", "mlp +traj-guard", "Adam tuned", "Adam lr=1e-3"} <= set(labels)
    ivs = [row["overall"]["iqm"] for row in data["leaderboard"]]
    assert all(iv["low"] <= iv["value"] <= iv["high"] for iv in ivs)
    assert [iv["value"] for iv in ivs] == sorted((iv["value"] for iv in ivs), reverse=True)
    (g,) = data["guards"]
    assert g["trajectory"]["worst_task"] <= bench.TOLERANCE and g["trajectory"]["over"] == 0
    rec = json.loads((tmp_path / "b" / "suites" / "quadratic_30d.json").read_text())
    assert rec["num_tasks"] == 1 and np.asarray(rec["optimizers"]["mlp"]["scores"]).shape == (2, 1)
    o = rec["optimizers"]["mlp"]
    assert len(o["task_speedups"]) == 1 and o["median_speedup"] == pytest.approx(np.median(o["task_speedups"]))
    assert (tmp_path / "b" / "profiles.png").stat().st_size > 0
    # a rerun reuses the saved suite (no training) and ranks identically
    msgs.clear()
    r2 = bench.run_bench(["mlp"], ["quadratic_30d"], out_dir=out, max_tasks=1, reps=200,
                         progress=msgs.append, baselines=("momentum",))
    assert any("done earlier" in m for m in msgs), msgs
    assert [x["optimizer"] for x in r2["leaderboard"]] == [x["optimizer"] for x in r["leaderboard"]]
    # other settings do not reuse it
    assert bench._load_record(str(tmp_path / "b" / "suites" / "quadratic_30d.json"),
                              dict(rec["settings"], seeds=3)) is None
