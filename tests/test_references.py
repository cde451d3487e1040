"""The reference cache (``meta_train.evaluation.references``): a suite evaluated with Adam's runs
read back from the cache gives exactly the results of computing them, a cached file is only used
under its own key, and a damaged one is reported and recomputed."""
import dataclasses

import numpy as np
import pytest

from meta_train.evaluation import compare as cmp
from meta_train.evaluation import references as refs
from tasks.suites import get_suite

ADAM = (cmp.ADAM_DEFAULT, cmp.ADAM_TUNED)


def _suite():
    # 2 tasks x 2 seeds of the 30-d quadratics, 60 steps: seconds
    return dataclasses.replace(get_suite("quadratic_30d"), num_steps=60)


def _run(suite, cache, monkeypatch=None, say=None):
    return cmp.run_suite(suite, [], guard=False, num_seeds=2, baselines=(), adam_factor=2,
                         num_tasks=2, reference_cache=cache, progress=say)


def _same(a, b):
    np.testing.assert_array_equal(a["envelopes"], b["envelopes"])
    for label in ADAM:
        for part in ("curves", "test", "final", "tuned_lr"):
            np.testing.assert_array_equal(a[part][label], b[part][label])


def test_cached_reference_gives_the_computed_results(tmp_path, monkeypatch):
    suite = _suite()
    plain = _run(suite, None)
    first = _run(suite, str(tmp_path))            # computes and writes
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("quadratic_30d-")
    _same(plain, first)

    def no_grid(*a, **k):
        raise AssertionError("Adam's grid was run although the cache holds it")
    monkeypatch.setattr(cmp, "_grid_curves", no_grid)
    said = []
    second = _run(suite, str(tmp_path), say=said.append)
    _same(plain, second)
    assert any("reference cache" in m for m in said)


def test_key_follows_what_the_runs_depend_on():
    suite = _suite()
    grid = [1e-3, 1e-2]
    key, settings = refs.reference_key(suite, 2, 2, 2, grid)
    assert key == refs.reference_key(suite, 2, 2, 2, grid)[0]
    assert settings["versions"]["jax"] and len(settings["source"]) == 64
    others = [refs.reference_key(suite, 3, 2, 2, grid), refs.reference_key(suite, 2, 3, 2, grid),
              refs.reference_key(suite, 2, 2, 4, grid), refs.reference_key(suite, 2, 2, 2, [1e-3]),
              refs.reference_key(dataclasses.replace(suite, seed=suite.seed + 1), 2, 2, 2, grid),
              refs.reference_key(dataclasses.replace(suite, num_steps=61), 2, 2, 2, grid),
              refs.reference_key(dataclasses.replace(suite, family_kwargs={"dim": 31}), 2, 2, 2, grid)]
    assert len({k for k, _ in others} | {key}) == len(others) + 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_key"])
def test_damaged_or_foreign_file_is_reported_and_recomputed(tmp_path, damage):
    suite = _suite()
    first = _run(suite, str(tmp_path))
    (path,) = tmp_path.glob("*.npz")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an npz at all")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:   # a valid file made under another key, at this key's name
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["key"] = np.asarray("0" * 64)
        np.savez(path.with_suffix(""), **arrays)    # np.savez appends .npz
    said = []
    again = _run(suite, str(tmp_path), say=said.append)
    _same(first, again)
    assert sum("not used" in m for m in said) == 1
    # the file was rewritten and is used next time
    said.clear()
    _run(suite, str(tmp_path), say=said.append)
    assert not any("not used" in m for m in said) and any("from the reference cache" in m for m in said)
