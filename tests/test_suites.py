"""Named held-out suites: fixed tasks, listed by name, usable by the report."""
import json

import jax
import numpy as np
import pytest

import learned_opt
import tasks
from meta_train.evaluation import compare as cmp
from meta_train.evaluation.report import write_report
from tasks.suites import KINDS, SUITE_SEED, get_suite, list_suites, suites_for


def test_every_listed_suite_resolves_to_fixed_tasks():
    names = list_suites()
    for must in ("mnist1d_mlp", "mnist1d_mlp_long", "digits_mlp", "mnist1d_mlp_deep"):
        assert must in names
    kinds = set()
    for name in names:
        spec = get_suite(name)
        kinds.add(spec.kind)
        assert spec.kind in KINDS and spec.num_tasks >= 1 and spec.num_steps >= 1
        assert spec.family in tasks.list_families()
    assert kinds == set(KINDS)          # every kind is represented
    # The same name means the same task configs, call after call.
    a, ka = get_suite("digits_mlp").tasks()
    b, kb = get_suite("digits_mlp").tasks(4)
    for x, y in zip(jax.tree.leaves(a) + [ka], jax.tree.leaves(b) + [kb]):
        np.testing.assert_array_equal(x, y)
    # the first k tasks of a suite are its first k tasks, not another draw of k
    c, kc = get_suite("digits_mlp").tasks(2)
    for x, y in zip(jax.tree.leaves(a) + [ka], jax.tree.leaves(c) + [kc]):
        np.testing.assert_array_equal(x[:2], y)
    with pytest.raises(tasks.TaskError, match="has 4 tasks"):
        get_suite("digits_mlp").tasks(5)


def test_named_suites_are_the_reports_default():
    """lopt report's default suites for the default config (mnist1d_mlp, 100-400-step episodes)
    and the named suites mnist1d_mlp, mnist1d_mlp_long, digits_mlp, mnist1d_mlp_deep are the same
    tasks at the same horizons."""
    default = suites_for("mnist1d_mlp", {}, max_episode_length=400)
    assert [s.kind for s in default] == list(KINDS)
    for d, name in zip(default, ("mnist1d_mlp", "mnist1d_mlp_long", "digits_mlp", "mnist1d_mlp_deep")):
        named = get_suite(name)
        assert (named.kind, named.family, named.family_kwargs, named.num_tasks, named.num_steps,
                named.seed) == (d.kind, d.family, d.family_kwargs, d.num_tasks, d.num_steps, d.seed)
        assert named.seed == SUITE_SEED
        ca, _ = d.tasks()
        cb, _ = named.tasks()
        for x, y in zip(jax.tree.leaves(ca), jax.tree.leaves(cb)):
            np.testing.assert_array_equal(x, y)


def test_noisy_quadratic_suites_measure_the_expected_loss():
    """The synthetic quadratics' curves record their exact expected loss (a batch loss near their
    optimum is mostly noise, and the speedup's envelope, a minimum over Adam's noisy curves, would
    score everything by Adam's luckiest batches); the other suites record the batch loss. The bench
    reruns a record made under the other measure (its settings say which)."""
    from meta_train.evaluation.bench import _settings
    curves = {name: get_suite(name).curve for name in list_suites()}
    assert curves["nqm"] == curves["quadratic_30d"] == "expected"
    assert curves["mnist1d_mlp"] == curves["text_rnn"] == curves["digits_autoencoder"] == "batch"
    cfg = {"seeds": 2, "max_tasks": 4, "baselines": [], "adam_factor": 4, "guards": []}
    assert _settings([], cfg, get_suite("nqm"))["curve"] == "expected"
    assert "curve" not in _settings([], cfg, get_suite("mnist1d_mlp"))


def test_unknown_suite_is_a_task_error():
    with pytest.raises(tasks.TaskError, match="unknown suite 'nope'"):
        get_suite("nope")


def test_report_on_a_named_suite(tmp_path):
    lopt = learned_opt.make("mlp")
    path = str(tmp_path / "opt.npz")
    learned_opt.save(path, lopt, lopt.init(jax.random.PRNGKey(0)),
                     {"train_config": {"family": "mnist1d_mlp"}, "outer_steps": 0})
    rep = write_report(path, str(tmp_path / "rep"), guard=False, suite_names=["quadratic_30d"],
                       seeds=2, baselines=("momentum",))
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = data["summary"]["quadratic_30d"]
    by_label = {r["optimizer"]: r for r in rows}
    # Tuned Adam is the reference (ratio 1 on every task); Adam at 1e-3 cannot beat it.
    assert by_label[cmp.ADAM_TUNED]["median_ratio"] == pytest.approx(1.0)
    assert by_label[cmp.ADAM_DEFAULT]["median_ratio"] >= 1.0
    # Adam's reference envelope contains tuned Adam's own curve (a longer run starts with the
    # same batches), so tuned Adam can reach its loss no later than it did: speedup <= 1.
    assert 0.0 < by_label[cmp.ADAM_TUNED]["speedup"]["median"] <= 1.0
    assert max(by_label[cmp.ADAM_TUNED]["speedups"]) <= 1.0
    assert by_label["momentum tuned"]["speedup"]["num_tasks"] == 4
    assert set(data["step_cost_vs_adam"]) == {"Adam", "mlp"}
    assert by_label["mlp"]["num_tasks"] == 4
    assert rep["path"].endswith("report.md")


def test_tuned_runs_are_the_runs_at_the_tuned_rates():
    """run_suite takes a tuned baseline's curve, final and test loss from its grid population
    (and Adam's default and tuned runs from one call): each equals a run of that optimizer at the
    chosen rate on the same task and seed, and no grid rate has a lower tuning loss."""
    import optax
    from learned_opt.baselines import LR_GRIDS, make_baseline
    from meta_train.evaluation import curves as ev
    suite = get_suite("quadratic_30d")
    res = cmp.run_suite(suite, [], guard=False, num_seeds=2, baselines=("momentum",),
                        adam_factor=1, num_tasks=2)
    cfgs, task_keys = suite.tasks(2)
    keys = cmp.seed_keys(task_keys, 2)
    T = suite.num_steps
    for label, make in (("momentum tuned", lambda lr: make_baseline("momentum", lr)),
                        (cmp.ADAM_TUNED, optax.adam), (cmp.ADAM_DEFAULT, optax.adam)):
        for i in range(2):
            task = suite.task_family.task(jax.tree.map(lambda x: x[i], cfgs))
            lr = float(res["tuned_lr"][label][i])
            for j in range(2):
                run = jax.jit(lambda k: ev.run_task(task, make(lr), k, T))(keys[i, j])
                np.testing.assert_allclose(res["curves"][label][i, j], run.losses, rtol=2e-4)
                np.testing.assert_allclose(res["final"][label][i, j], run.final_loss, rtol=2e-4)
                np.testing.assert_allclose(res["test"][label][i, j], run.test_loss, rtol=2e-4)
    # the chosen rate is the grid's best on the seed-averaged tuning loss
    for i in range(2):
        task = suite.task_family.task(jax.tree.map(lambda x: x[i], cfgs))
        chosen = ev.final_loss(res["curves"]["momentum tuned"][i]).mean()
        for lr in LR_GRIDS["momentum"][::3]:
            runs = [jax.jit(lambda k: ev.run_task(task, make_baseline("momentum", lr), k, T))(keys[i, j])
                    for j in range(2)]
            other = np.mean([ev.final_loss(np.asarray(r.losses)) for r in runs])
            assert chosen <= other * (1 + 1e-4) or not np.isfinite(other)


def test_held_out_bench_suites_are_other_tasks_of_the_same_suites():
    """``lopt bench --held-out``: the same suites (family, horizon, number of tasks) with tasks,
    initialisations and batches from HELDOUT_SEED; its records are apart from the default's."""
    from meta_train.evaluation.bench import _settings, bench_suites
    from tasks.suites import HELDOUT_SEED
    plain, held = bench_suites(["quadratic_30d"])[0], bench_suites(["quadratic_30d"], held_out=True)[0]
    assert (held.name, held.family, held.num_steps, held.seed) == (plain.name, plain.family,
                                                                   plain.num_steps, HELDOUT_SEED)
    (c0, k0), (c1, k1) = plain.tasks(), held.tasks()
    assert not np.any(np.all(np.asarray(k0)[:, None] == np.asarray(k1)[None], -1))
    assert not np.allclose(np.asarray(c0["eigs"]), np.asarray(c1["eigs"]))
    cfg = {"seeds": 2, "max_tasks": 4, "baselines": [], "adam_factor": 4, "guards": []}
    assert _settings([], cfg, plain) != _settings([], cfg, held)


def test_grid_runs_in_chunks_when_too_large_at_once(monkeypatch):
    """A grid population whose working memory exceeds the budget runs its rates in chunks
    (``lax.map``, also when the chunks do not divide the grid) with exactly the results of running
    them all at once; the chunk is the share of the grid that fits, at least one rate. A population
    whose compilation runs out of device memory (XLA:TPU) is sized from one rate instead."""
    from types import SimpleNamespace
    from meta_train.evaluation import curves as ev

    def fake(temp):
        return SimpleNamespace(memory_analysis=lambda: SimpleNamespace(temp_size_in_bytes=temp))
    assert cmp.grid_chunk(fake(10), 11, budget=100) == 11
    assert cmp.grid_chunk(fake(550), 11, budget=100) == 2
    assert cmp.grid_chunk(fake(10 ** 12), 11, budget=100) == 1
    assert cmp.grid_chunk(fake(50), 11, budget=100, compiled_rates=1) == 2   # 50 per rate: 2 fit
    assert cmp.grid_chunk(SimpleNamespace(), 11, budget=100) == 11   # no analysis: all at once
    monkeypatch.setattr(cmp, "GRID_MEMORY_BYTES", 123)
    assert cmp.grid_budget() == 123
    suite = get_suite("quadratic_30d")
    cfgs, task_keys = suite.tasks(2)
    keys = cmp.seed_keys(task_keys, 2)
    grid = np.array([1e-3, 1e-2, 1e-1], np.float32)
    import optax
    make = lambda lr: optax.adam(lr)  # noqa: E731
    chosen, analysed = [], []   # the chunks chosen, the compiled populations they were chosen for
    real_chunk, real_compile = cmp.grid_chunk, cmp._compile

    def spy(compiled, *a, **k):
        analysed.append(compiled)
        chosen.append(real_chunk(compiled, *a, **k))
        return chosen[-1]
    monkeypatch.setattr(cmp, "grid_chunk", spy)
    monkeypatch.setattr(cmp, "GRID_MEMORY_BYTES", None)
    whole = cmp._grid_curves(suite.task_family, cfgs, keys, make, grid, 30, final=True)
    assert chosen == [3]
    assert isinstance(whole, ev.TaskCurves) and whole.losses.shape == (3, 2, 2, 30)
    for budget, want in ((1, 1), (None, 2)):   # one rate at a time; two, then the remainder
        chosen.clear()
        if budget is None:   # a budget two of the three rates' population fits in
            budget = int(analysed[0].memory_analysis().temp_size_in_bytes * 2 // 3) + 1
        monkeypatch.setattr(cmp, "GRID_MEMORY_BYTES", budget)
        parts = cmp._grid_curves(suite.task_family, cfgs, keys, make, grid, 30, final=True)
        assert chosen == [want]
        for a, b in zip(whole, parts):
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-6)
    # the whole population fails to compile for memory: one rate's needs size the chunk
    calls = []

    def oom_for_the_whole_grid(fn, c, k, g):
        calls.append(len(g))
        if len(calls) == 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm")
        return real_compile(fn, c, k, g)
    monkeypatch.setattr(cmp, "_compile", oom_for_the_whole_grid)
    monkeypatch.setattr(cmp, "GRID_MEMORY_BYTES", 10 ** 12)
    chosen.clear()
    parts = cmp._grid_curves(suite.task_family, cfgs, keys, make, grid, 30, final=True)
    # compiled: the whole grid (fails), one rate (to size the chunk), the chunked population
    assert calls == [3, 1, 3] and chosen == [3]
    np.testing.assert_allclose(whole.losses, parts.losses, rtol=1e-6)
    monkeypatch.setattr(cmp, "_compile", lambda *a: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):   # any other compile error is not swallowed
        cmp._grid_curves(suite.task_family, cfgs, keys, make, grid, 30, final=True)
